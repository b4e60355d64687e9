-- The evidence log: append-only, hash-chained (see lanyard-audit).
CREATE TABLE audit_events (
    seq        BIGINT PRIMARY KEY NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    time       BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    subject    TEXT,
    event      TEXT NOT NULL            -- canonical JSON of the event
);
CREATE INDEX audit_events_subject ON audit_events (subject, time);
CREATE INDEX audit_events_kind ON audit_events (kind, time);

CREATE TABLE audit_checkpoints (
    size       BIGINT PRIMARY KEY NOT NULL,
    head       TEXT NOT NULL,
    time       BIGINT NOT NULL,
    key_id     TEXT NOT NULL,
    signature  TEXT NOT NULL
);
