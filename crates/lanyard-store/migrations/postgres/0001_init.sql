-- Lanyard datastore, PostgreSQL dialect. Times are unix seconds.
CREATE TABLE entries (
    id           TEXT PRIMARY KEY NOT NULL,
    spiffe_id    TEXT NOT NULL,
    parent_id    TEXT NOT NULL,
    selectors    TEXT NOT NULL,          -- JSON array of "type:value", sorted
    owner        TEXT NOT NULL,
    environment  TEXT,
    x509_ttl     BIGINT NOT NULL DEFAULT 0,
    jwt_ttl      BIGINT NOT NULL DEFAULT 0,
    dns_names    TEXT NOT NULL DEFAULT '[]',
    hint         TEXT,
    admin        BOOLEAN NOT NULL DEFAULT FALSE,
    downstream   BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at   BIGINT,
    revision     BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX entries_identity ON entries (spiffe_id, parent_id, selectors);
CREATE INDEX entries_parent ON entries (parent_id);

CREATE TABLE nodes (
    spiffe_id         TEXT PRIMARY KEY NOT NULL,
    attestation_type  TEXT NOT NULL,
    selectors         TEXT NOT NULL,     -- JSON array
    serial            TEXT NOT NULL,     -- serial of the current agent SVID
    expires_at        BIGINT NOT NULL,  -- expiry of the current agent SVID
    banned            BOOLEAN NOT NULL DEFAULT FALSE,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE join_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,  -- SHA-256 hex; the token itself is never stored
    spiffe_id   TEXT,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE bundles (
    trust_domain  TEXT PRIMARY KEY NOT NULL,
    sequence      BIGINT NOT NULL,
    document      TEXT NOT NULL,
    updated_at    BIGINT NOT NULL
);
