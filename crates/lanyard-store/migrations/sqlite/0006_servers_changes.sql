-- Several servers on one database (issue #16); on SQLite there is one server, but
-- the tables are the same so that both backends behave alike.
--
-- Every server sharing the database and the authorities it publishes: its CA
-- certificates and JWT keys, in every state (prepared, active, retired, tainted).
CREATE TABLE servers (
    name             TEXT PRIMARY KEY NOT NULL,
    address          TEXT NOT NULL DEFAULT '',
    authorities      TEXT NOT NULL,               -- JSON array of published authorities
    expires_at       INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    seen_at          INTEGER NOT NULL,
    deregistered_at  INTEGER
);

-- The change feed, numbered in commit order (SQLite serializes writers).
CREATE TABLE changes (
    revision  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT NOT NULL,
    key       TEXT NOT NULL,
    origin    TEXT NOT NULL
);
