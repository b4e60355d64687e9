-- Agent SVID serials (clone detection): the serial before the last renewal stays
-- accepted only until the agent presents the new one; presentations of any other
-- serial are counted as possible clones.
ALTER TABLE nodes ADD COLUMN previous_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN superseded_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN superseded_at BIGINT;
