-- The freshness objective's reading (`/metrics`: connections_stale): the watched connections
-- not checked since a time are a range of this index, so counting them costs what there are
-- of them, not what the register holds.
CREATE INDEX connections_checked ON connections (checked_at) WHERE gone_at IS NULL;
