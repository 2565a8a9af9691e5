-- The UID (and GID) each app runs as. Rows are never deleted, not even when
-- the app is removed, so a UID is never handed to a second app.
CREATE TABLE app_uids (
    app_id        TEXT PRIMARY KEY,
    uid           BIGINT NOT NULL UNIQUE,
    allocated_at  BIGINT NOT NULL
);
