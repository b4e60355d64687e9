-- Several servers on one database (issue #16).
--
-- Every server sharing the database and the authorities it publishes: its CA
-- certificates and JWT keys, in every state (prepared, active, retired, tainted).
-- The trust domain's bundle is the union over servers that are not deregistered,
-- of authorities that have not expired.
CREATE TABLE servers (
    name             TEXT PRIMARY KEY NOT NULL,   -- the data dir's server-id
    address          TEXT NOT NULL DEFAULT '',    -- its agent API address, for operators
    authorities      TEXT NOT NULL,               -- JSON array of published authorities
    expires_at       BIGINT NOT NULL,             -- latest expiry among them
    started_at       BIGINT NOT NULL,
    seen_at          BIGINT NOT NULL,             -- last heartbeat
    deregistered_at  BIGINT                       -- set by `lanyard server deregister`
);

-- The change feed: one row per committed change other servers must see, numbered
-- in commit order (writers take one advisory lock to append, so a revision is never
-- committed after a higher one). Each append is also announced with NOTIFY
-- lanyard_changes; a server that reconnects reads what it missed from here.
CREATE TABLE changes (
    revision  BIGSERIAL PRIMARY KEY,
    kind      TEXT NOT NULL,     -- entry, node, policy, deny_list, exception, bundle, server
    key       TEXT NOT NULL,     -- the changed object's id
    origin    TEXT NOT NULL      -- the writing server's name ('' when unknown)
);
