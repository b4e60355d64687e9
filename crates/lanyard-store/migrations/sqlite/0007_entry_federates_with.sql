-- Trust domains an entry's identity federates with (JSON array of trust domain
-- names, e.g. ["partner.example"]). Stored and shown; enforcement comes later.
-- Existing entries federate with nothing.
ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';
