-- The planner: every refresh decision stored and explained, MFA and transient incidents
-- remembered, outage inference through an index, reclassification as durable work.

-- `mfaEnabled` as Basiq said it (NULL: not said); 1 when a refresh may prompt the user
-- for a one-time code (`mfaEnabled`, or a job of this connection showed `mfa-challenge`).
ALTER TABLE connections ADD COLUMN mfa_enabled INTEGER;
ALTER TABLE connections ADD COLUMN needs_user_present INTEGER NOT NULL DEFAULT 0;
-- The failed job the current transient incident's last retry decision was made for.
ALTER TABLE connections ADD COLUMN transient_job_id TEXT;
-- When the newest job failed bank-side (NULL otherwise): what the outage inference counts.
ALTER TABLE connections ADD COLUMN bank_failure_at INTEGER;
-- The last refresh decision: refreshed / denied (with its reason) / deferred.
ALTER TABLE connections ADD COLUMN last_decision TEXT;
ALTER TABLE connections ADD COLUMN last_decision_reason TEXT;
ALTER TABLE connections ADD COLUMN last_decision_trigger TEXT;
ALTER TABLE connections ADD COLUMN last_decision_at INTEGER;

UPDATE connections SET bank_failure_at = COALESCE(newest_job_updated, newest_job_created)
 WHERE newest_job_side = 'bank';

-- The inferred-outage count reads only bank-side failures at one connector in a window.
CREATE INDEX connections_bank_failures ON connections (institution_id, method, bank_failure_at, user_id)
 WHERE bank_failure_at IS NOT NULL AND gone_at IS NULL;
CREATE INDEX connector_status_changes_connector ON connector_status_changes (institution_id, method, changed_at);

-- Every refresh decision, with the retention of the other history tables.
CREATE TABLE refresh_decisions (
    id            INTEGER PRIMARY KEY,
    connection_id TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    trigger       TEXT NOT NULL,
    decision      TEXT NOT NULL CHECK (decision IN ('refreshed', 'denied', 'deferred')),
    reason        TEXT,
    job_id        TEXT,
    decided_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX refresh_decisions_connection ON refresh_decisions (connection_id, decided_at);
CREATE INDEX refresh_decisions_time ON refresh_decisions (decided_at);

-- Connectors whose connections must be classified again (a status change, an inferred
-- outage opening or closing), worked through in small batches; a crash resumes it.
CREATE TABLE reclassify_queue (
    institution_id  TEXT NOT NULL,
    method          TEXT NOT NULL,
    queued_at       INTEGER NOT NULL,
    -- The last connection id done (batches walk the ids in order).
    cursor          TEXT NOT NULL DEFAULT '',
    -- An outage ended: spread recovery refreshes of the connections it held.
    recovery        INTEGER NOT NULL DEFAULT 0,
    recovery_total  INTEGER NOT NULL DEFAULT 0,
    recovery_done   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (institution_id, method)
) STRICT;
