-- Governance: policies, JWT revocations, time-boxed exceptions, CA dependency reports.

-- Policy sets as Cedar text, one per kind ("registration", "authz").
CREATE TABLE policies (
    kind        TEXT PRIMARY KEY NOT NULL,
    body        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL
);

-- Revoked JWT-SVIDs by jti; kept until the token would have expired anyway.
CREATE TABLE revoked_jwts (
    jti         TEXT PRIMARY KEY NOT NULL,
    spiffe_id   TEXT,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT NOT NULL,
    reason      TEXT NOT NULL
);

-- Time-boxed exceptions for legacy static secrets; the secret is sealed (AES-256-GCM).
CREATE TABLE exceptions (
    name          TEXT PRIMARY KEY NOT NULL,
    owner         TEXT NOT NULL,
    justification TEXT NOT NULL,
    allowed       TEXT NOT NULL,          -- JSON array of SPIFFE IDs
    expires_at    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    revoked_at    BIGINT,
    sealed        TEXT NOT NULL           -- base64url(nonce || ciphertext || tag)
);

-- Which CA certificates (hex subject key id -> latest expiry) signed SVIDs an agent
-- still holds, as the agent last reported.
ALTER TABLE nodes ADD COLUMN held_authorities TEXT NOT NULL DEFAULT '{}';
