-- The egress host list of each deployed app's manifest, as a JSON array of
-- host patterns (`api.example.org`, `*.example.org`). The egress proxy
-- narrows an app with a row here to the listed names; an app without a row
-- gets the list of its space, or the platform's. Deploying a new manifest
-- replaces the row.
CREATE TABLE app_egress_hosts (
    app_id      TEXT PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    hosts       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
