-- Node-attestation tokens already used (replay protection shared by every server):
-- one row per token, keyed by the SHA-256 (hex) the server computes from it; the
-- token itself is never stored. A row is live until the token expires and is pruned
-- afterwards.
CREATE TABLE attestation_replays (
    replay_key  TEXT PRIMARY KEY NOT NULL,
    attestor    TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX attestation_replays_expires ON attestation_replays (expires_at);
