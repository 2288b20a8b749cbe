-- An event whose processing failed (Basiq or the disk) is tried again after a backoff, not
-- at once: a Basiq outage of minutes does not use up its tries.
ALTER TABLE inbox ADD COLUMN next_attempt_at INTEGER;

-- A health notice superseded by a newer one about the same connection is found among the
-- user's few notices.
CREATE INDEX outbox_order ON outbox (order_key, id);
