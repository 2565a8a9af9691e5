-- Per-app secrets of the egress proxy. An app presents its secret as the
-- password of Proxy-Authorization Basic; only the hex SHA-256 of the secret
-- is stored. Issuing a new secret replaces the row, so one secret is valid
-- per app at a time.
CREATE TABLE proxy_secrets (
    app_id       TEXT PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    secret_hash  TEXT NOT NULL,
    issued_at    BIGINT NOT NULL
);
