-- OAuth 2.0 state of the token service. Times are milliseconds since the
-- Unix epoch, except where a column name says otherwise.

CREATE TABLE app_redirect_uris (
    app_id        TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    redirect_uri  TEXT NOT NULL,
    PRIMARY KEY (app_id, redirect_uri)
);

-- Customers who can consent to an app using their data. secret_hash is an
-- Argon2id PHC string.
CREATE TABLE customers (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- Refresh tokens, stored as the SHA-256 of the token. A family is one
-- consent: each use spends a token and issues the next one in the family;
-- using a spent token revokes the whole family.
CREATE TABLE refresh_tokens (
    token_hash   TEXT PRIMARY KEY,
    family_id    TEXT NOT NULL,
    app_id       TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    audience     TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    access_jti   TEXT NOT NULL,
    access_exp   BIGINT NOT NULL,
    issued_at    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Revoked access tokens, kept until they expire. expires_at is in seconds,
-- like the token's exp claim.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT NOT NULL
);

-- Per app: access tokens issued at or before cut_off (seconds) are refused.
CREATE TABLE token_cut_offs (
    app_id   TEXT PRIMARY KEY,
    cut_off  BIGINT NOT NULL
);
