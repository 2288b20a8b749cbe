-- A fact has a time (issue "Right over many days").
-- outages.since: the last read of /connectors that saw the bank up before this outage (the
-- earliest it may have begun); NULL when not known (down at the first sight), which holds
-- every failure there as before.
ALTER TABLE outages ADD COLUMN since INTEGER;
-- When a connection's status turned invalid: between the last read that saw it otherwise
-- (invalid_from) and the first that saw it invalid (invalid_seen).
ALTER TABLE connections ADD COLUMN invalid_from INTEGER;
ALTER TABLE connections ADD COLUMN invalid_seen INTEGER;
UPDATE connections SET invalid_seen = COALESCE(health_since, checked_at),
                       invalid_from = COALESCE(health_since, checked_at)
 WHERE status = 'invalid';
-- The incident an owed refresh is for (an outage's end, a failed job's time): a success
-- after it makes the refresh not needed.
ALTER TABLE connections ADD COLUMN refresh_due_since INTEGER;
-- When an outage's recoveries are queued: the earliest it may have ended (the last read that
-- still saw the bank down, or when an inferred one was inferred); a job that succeeded after
-- it answers the recovery.
ALTER TABLE reclassify_queue ADD COLUMN ended_after INTEGER;
