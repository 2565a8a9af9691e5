-- Control-plane state. Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE apps (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE app_versions (
    app_id        TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    version       TEXT NOT NULL,
    image_digest  TEXT NOT NULL,
    manifest      TEXT NOT NULL,
    sbom          TEXT,
    state         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (app_id, version)
);

CREATE TABLE grants (
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    service     TEXT NOT NULL,
    scope       TEXT NOT NULL,
    granted_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, service, scope)
);

-- No foreign key to apps: an operator may ban an app id before it registers.
CREATE TABLE decisions (
    id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id               TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('ban', 'throttle')),
    throttle_per_second  DOUBLE PRECISION,
    reason               TEXT NOT NULL,
    policy               TEXT,
    evidence             TEXT NOT NULL,
    origin               TEXT NOT NULL CHECK (origin IN ('guard', 'operator')),
    simulated            BIGINT NOT NULL CHECK (simulated IN (0, 1)),
    started_at           BIGINT NOT NULL,
    expires_at           BIGINT,
    lifted_at            BIGINT,
    lifted_by            TEXT
);
CREATE INDEX decisions_app ON decisions (app_id, started_at);

CREATE TABLE findings (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id             TEXT NOT NULL,
    version            TEXT NOT NULL,
    advisory_id        TEXT NOT NULL,
    ecosystem          TEXT NOT NULL,
    package            TEXT NOT NULL,
    installed_version  TEXT NOT NULL,
    fixed_version      TEXT,
    severity           TEXT NOT NULL,
    found_at           BIGINT NOT NULL,
    deadline_at        BIGINT NOT NULL,
    resolved_at        BIGINT,
    UNIQUE (app_id, version, advisory_id, ecosystem, package),
    FOREIGN KEY (app_id, version) REFERENCES app_versions (app_id, version) ON DELETE CASCADE
);

CREATE TABLE trials (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id       TEXT NOT NULL,
    version      TEXT NOT NULL,
    state        TEXT NOT NULL,
    verdict      TEXT,
    report       TEXT,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    FOREIGN KEY (app_id, version) REFERENCES app_versions (app_id, version) ON DELETE CASCADE
);

-- Every certificate the platform CA issued. spki_sha256 is the base64
-- SHA-256 of the DER SubjectPublicKeyInfo (the pin, RFC 7469 section 2.4).
CREATE TABLE certificates (
    serial             TEXT PRIMARY KEY,
    identity           TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('app', 'service', 'platform')),
    subject            TEXT NOT NULL,
    spki_sha256        TEXT NOT NULL,
    not_before         BIGINT NOT NULL,
    not_after          BIGINT NOT NULL,
    issued_at          BIGINT NOT NULL,
    revoked_at         BIGINT,
    revocation_reason  TEXT
);
CREATE INDEX certificates_subject ON certificates (kind, subject);
