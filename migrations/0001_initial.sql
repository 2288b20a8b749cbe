-- basiq-health schema. Every timestamp is INTEGER unix seconds (UTC): comparisons and
-- indexes stay exact; read one with datetime(col, 'unixepoch').

-- Installation-wide values, e.g. the seed that spreads users' sweep offsets.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- The register of watched users (Basiq cannot list them).
CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    added_at      INTEGER NOT NULL,
    next_due_at   INTEGER NOT NULL,
    last_swept_at INTEGER,
    -- Basiq answered 404: not swept again until re-added.
    gone_at       INTEGER,
    -- `users remove`: history is kept, sweeping stops.
    removed_at    INTEGER
) STRICT;
CREATE INDEX users_due ON users (next_due_at) WHERE gone_at IS NULL AND removed_at IS NULL;

CREATE TABLE connections (
    connection_id       TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL REFERENCES users (user_id),
    institution_id      TEXT NOT NULL,
    method              TEXT NOT NULL,
    status              TEXT NOT NULL,
    created_date        INTEGER,
    last_used           INTEGER,
    expiry_date         INTEGER,
    -- The newest job (by `created`) Basiq showed for this connection.
    newest_job_id       TEXT,
    newest_job_state    TEXT,
    newest_job_code     TEXT,
    newest_job_side     TEXT,
    newest_job_created  INTEGER,
    newest_job_updated  INTEGER,
    -- The current classification.
    health              TEXT,
    reason              TEXT,
    checked_at          INTEGER,
    health_since        INTEGER,
    -- Smallest consent-expiry threshold (30, 7, 1 days) already warned about.
    consent_warned_days INTEGER,
    first_seen_at       INTEGER NOT NULL,
    -- No longer listed by Basiq (deleted by the user or the partner).
    gone_at             INTEGER
) STRICT;
CREATE INDEX connections_user ON connections (user_id);
CREATE INDEX connections_connector ON connections (institution_id, method);

-- Jobs outlive Basiq's 7 days here.
CREATE TABLE jobs (
    job_id         TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    connection_id  TEXT,
    institution_id TEXT,
    job_type       TEXT,
    state          TEXT NOT NULL,
    failure_code   TEXT,
    failed_step    TEXT,
    created        INTEGER,
    updated        INTEGER,
    first_seen_at  INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX jobs_connection ON jobs (connection_id, created);
CREATE INDEX jobs_user ON jobs (user_id, created);

CREATE TABLE job_steps (
    job_id        TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    title         TEXT NOT NULL,
    status        TEXT NOT NULL,
    result_code   TEXT,
    result_title  TEXT,
    result_detail TEXT,
    PRIMARY KEY (job_id, position)
) STRICT;

-- The last status `/connectors` gave for each connector (institution + method).
CREATE TABLE connectors (
    institution_id TEXT NOT NULL,
    method         TEXT NOT NULL,
    status         TEXT NOT NULL,
    name           TEXT,
    since          INTEGER NOT NULL,
    checked_at     INTEGER NOT NULL,
    PRIMARY KEY (institution_id, method)
) STRICT;

CREATE TABLE connector_status_changes (
    id             INTEGER PRIMARY KEY,
    institution_id TEXT NOT NULL,
    method         TEXT NOT NULL,
    from_status    TEXT,
    to_status      TEXT NOT NULL,
    changed_at     INTEGER NOT NULL
) STRICT;

-- An outage: from `/connectors`, or inferred from several users' bank-side failures.
CREATE TABLE outages (
    id             INTEGER PRIMARY KEY,
    institution_id TEXT NOT NULL,
    method         TEXT NOT NULL,
    source         TEXT NOT NULL CHECK (source IN ('connectors', 'inferred')),
    status         TEXT,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    affected_users INTEGER
) STRICT;
CREATE UNIQUE INDEX outages_open ON outages (institution_id, method, source) WHERE ended_at IS NULL;

CREATE TABLE health_changes (
    id            INTEGER PRIMARY KEY,
    connection_id TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    from_health   TEXT,
    to_health     TEXT NOT NULL,
    reason        TEXT,
    job_id        TEXT,
    changed_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX health_changes_connection ON health_changes (connection_id, changed_at);
CREATE INDEX health_changes_time ON health_changes (changed_at);

CREATE TABLE sweeps (
    id            INTEGER PRIMARY KEY,
    trigger       TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    ended_at      INTEGER,
    users_swept   INTEGER NOT NULL DEFAULT 0,
    users_failed  INTEGER NOT NULL DEFAULT 0,
    users_gone    INTEGER NOT NULL DEFAULT 0,
    counts        TEXT
) STRICT;
