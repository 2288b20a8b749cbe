-- Refreshes: every attempt is reserved here before the request is sent, so the daily cap
-- holds across crashes and restarts (a crash after the reservation costs one slot).
CREATE TABLE refresh_attempts (
    id             INTEGER PRIMARY KEY,
    connection_id  TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    method         TEXT NOT NULL,
    trigger        TEXT NOT NULL,
    reserved_at    INTEGER NOT NULL,
    -- reserved, created, existing, found-after-timeout, rejected, capped-by-basiq, failed
    outcome        TEXT NOT NULL DEFAULT 'reserved',
    job_id         TEXT,
    http_status    INTEGER,
    finished_at    INTEGER
) STRICT;
CREATE INDEX refresh_attempts_window ON refresh_attempts (connection_id, reserved_at);

-- Basiq answered 429/403 to a refresh: its cap is reached (the partner's app refreshes too).
ALTER TABLE connections ADD COLUMN basiq_capped_until INTEGER;
-- A refresh the daemon owes: recovery after an outage, or a transient-failure retry.
ALTER TABLE connections ADD COLUMN refresh_due_at INTEGER;
ALTER TABLE connections ADD COLUMN refresh_due_trigger TEXT;
-- Retries spent on the current transient-failure incident.
ALTER TABLE connections ADD COLUMN transient_retries INTEGER NOT NULL DEFAULT 0;
-- Daily mode: the connection's next slot in the unattended window.
ALTER TABLE connections ADD COLUMN daily_due_at INTEGER;
CREATE INDEX connections_refresh_due ON connections (refresh_due_at) WHERE refresh_due_at IS NOT NULL;
CREATE INDEX connections_daily_due ON connections (daily_due_at) WHERE daily_due_at IS NOT NULL;

-- Purges are irreversible: each request is kept for audit.
CREATE TABLE purges (
    id             INTEGER PRIMARY KEY,
    user_id        TEXT NOT NULL,
    connection_id  TEXT NOT NULL,
    institution_id TEXT,
    requested_at   INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    http_status    INTEGER,
    correlation_id TEXT,
    detail         TEXT
) STRICT;
