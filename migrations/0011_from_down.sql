-- Whether a connector's status change left a status that was down, written by the daemon
-- from its one predicate (`ConnectorStatus::is_down`), so that no query spells the list of
-- up statuses again. Rows from before: the statuses that predicate called up then.
ALTER TABLE connector_status_changes ADD COLUMN from_down INTEGER NOT NULL DEFAULT 0;
UPDATE connector_status_changes SET from_down = 1
 WHERE from_status IS NOT NULL
   AND from_status NOT IN ('operational', 'degraded-performance', 'under-maintenance');
