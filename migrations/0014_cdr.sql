-- The second witness (issue 24): the banks' own Consumer Data Right status and planned
-- outages.

-- An outage may now be told by the data holder itself: source 'cdr'. SQLite cannot change a
-- CHECK, so the table is made again with its rows, ids and indexes. `explanation`: the data
-- holder's own words (cleaned and cut when read), shown as data.
CREATE TABLE outages_new (
    id             INTEGER PRIMARY KEY,
    institution_id TEXT NOT NULL,
    method         TEXT NOT NULL,
    source         TEXT NOT NULL CHECK (source IN ('connectors', 'inferred', 'cdr')),
    status         TEXT,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    affected_users INTEGER,
    since          INTEGER,
    explanation    TEXT
) STRICT;
INSERT INTO outages_new (id, institution_id, method, source, status, started_at, ended_at,
                         affected_users, since)
    SELECT id, institution_id, method, source, status, started_at, ended_at, affected_users, since
      FROM outages;
DROP TABLE outages;
ALTER TABLE outages_new RENAME TO outages;
CREATE UNIQUE INDEX outages_open ON outages (institution_id, method, source) WHERE ended_at IS NULL;
CREATE INDEX outages_connector ON outages (institution_id, method, source, ended_at);

-- What Basiq's /connectors says of the institution behind an open-banking connector: the
-- ABN (digits only) and short name the CDR mapping reads.
ALTER TABLE connectors ADD COLUMN short_name TEXT;
ALTER TABLE connectors ADD COLUMN abn TEXT;

-- The Register's brands, as last read (kept when the Register cannot be read).
CREATE TABLE cdr_brands (
    brand_id        TEXT PRIMARY KEY,
    brand_name      TEXT NOT NULL,
    abn             TEXT,
    public_base_uri TEXT,
    last_updated    INTEGER
) STRICT, WITHOUT ROWID;

-- The Register read itself: one row. Its ETag, when it last answered, and its failures
-- (the backoff and the hourly log line).
CREATE TABLE cdr_register (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    etag       TEXT,
    read_at    INTEGER,
    due_at     INTEGER NOT NULL,
    failures   INTEGER NOT NULL DEFAULT 0,
    logged_at  INTEGER
) STRICT;

-- Each Basiq institution (open-banking connector) and the brand it maps to, with how.
CREATE TABLE cdr_mappings (
    institution_id TEXT PRIMARY KEY,
    brand_id       TEXT,
    match          TEXT NOT NULL CHECK (match IN ('abn', 'abn+name', 'override', 'ambiguous', 'none')),
    mapped_at      INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Each polled brand: its last status read, when the next reads are due, the failed reads
-- since the last good one (while any, the witness says nothing) and ever (a metric).
CREATE TABLE cdr_polls (
    brand_id          TEXT PRIMARY KEY,
    status            TEXT,
    explanation       TEXT,
    update_time       INTEGER,
    status_checked_at INTEGER,
    status_due_at     INTEGER NOT NULL,
    outages_due_at    INTEGER NOT NULL,
    failures          INTEGER NOT NULL DEFAULT 0,
    failures_total    INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT
) STRICT, WITHOUT ROWID;

-- A data holder's planned outage (a maintenance window), per institution it explains.
-- `notified_at`: the partner was told (once per window). `withdrawn_at`: the data holder
-- no longer lists it before it began. `recovered_at`: its end was handled (the connections
-- it held given their recovery slots).
CREATE TABLE cdr_windows (
    id             INTEGER PRIMARY KEY,
    institution_id TEXT NOT NULL,
    method         TEXT NOT NULL,
    brand_id       TEXT NOT NULL,
    starts_at      INTEGER NOT NULL,
    ends_at        INTEGER NOT NULL,
    partial        INTEGER NOT NULL,
    explanation    TEXT NOT NULL,
    first_seen_at  INTEGER NOT NULL,
    notified_at    INTEGER,
    withdrawn_at   INTEGER,
    recovered_at   INTEGER,
    UNIQUE (institution_id, method, starts_at, ends_at)
) STRICT;
CREATE INDEX cdr_windows_ends ON cdr_windows (institution_id, ends_at);
