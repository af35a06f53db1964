-- The operator can put a dead letter back on its subject (polar-billing dead-letters replay): when it was done.
ALTER TABLE dead_letters ADD COLUMN replayed_at timestamptz;
CREATE INDEX dead_letters_source_idx ON dead_letters (source, id);
