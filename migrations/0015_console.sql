-- The operator's console (issue 25): sign-in codes and sessions, counts per bank kept by
-- triggers (so a page costs the same at a million users), and hourly rollups for the charts.

-- A one-time sign-in link's code (`basiq-health console`): only its SHA-256 is kept.
CREATE TABLE console_codes (
    code_hash  TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) STRICT, WITHOUT ROWID;

-- A browser's session: the SHA-256 of its cookie.
CREATE TABLE console_sessions (
    session_hash TEXT PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Watched connections per connector and health ('connector' tallies, key
-- `institution|method|health`), and action-required ones per reason ('action' tallies),
-- moved by triggers like the other tallies (0005).
INSERT INTO tallies (name, key, n)
SELECT 'connector', c.institution_id || '|' || c.method || '|' || COALESCE(c.health, ''), COUNT(*)
  FROM connections c
 WHERE c.gone_at IS NULL
   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = c.user_id AND u.removed_at IS NOT NULL)
 GROUP BY c.institution_id, c.method, COALESCE(c.health, '');

INSERT INTO tallies (name, key, n)
SELECT 'action', COALESCE(c.reason, ''), COUNT(*)
  FROM connections c
 WHERE c.gone_at IS NULL AND c.health = 'action-required'
   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = c.user_id AND u.removed_at IS NOT NULL)
 GROUP BY COALESCE(c.reason, '');

CREATE TRIGGER tally_connector_insert AFTER INSERT ON connections
WHEN NEW.gone_at IS NULL
 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = NEW.user_id AND u.removed_at IS NOT NULL)
BEGIN
    INSERT INTO tallies (name, key, n)
    VALUES ('connector', NEW.institution_id || '|' || NEW.method || '|' || COALESCE(NEW.health, ''), 1)
    ON CONFLICT (name, key) DO UPDATE SET n = n + 1;
    INSERT INTO tallies (name, key, n)
    SELECT 'action', COALESCE(NEW.reason, ''), 1 WHERE NEW.health = 'action-required'
    ON CONFLICT (name, key) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER tally_connector_update
AFTER UPDATE OF health, reason, gone_at, user_id, institution_id, method ON connections
WHEN OLD.health IS NOT NEW.health OR OLD.reason IS NOT NEW.reason OR OLD.gone_at IS NOT NEW.gone_at
  OR OLD.user_id IS NOT NEW.user_id OR OLD.institution_id IS NOT NEW.institution_id
  OR OLD.method IS NOT NEW.method
BEGIN
    UPDATE tallies SET n = n - 1
     WHERE name = 'connector'
       AND key = OLD.institution_id || '|' || OLD.method || '|' || COALESCE(OLD.health, '')
       AND OLD.gone_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = OLD.user_id AND u.removed_at IS NOT NULL);
    UPDATE tallies SET n = n - 1
     WHERE name = 'action' AND key = COALESCE(OLD.reason, '') AND OLD.health = 'action-required'
       AND OLD.gone_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = OLD.user_id AND u.removed_at IS NOT NULL);
    INSERT INTO tallies (name, key, n)
    SELECT 'connector', NEW.institution_id || '|' || NEW.method || '|' || COALESCE(NEW.health, ''), 1
     WHERE NEW.gone_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = NEW.user_id AND u.removed_at IS NOT NULL)
    ON CONFLICT (name, key) DO UPDATE SET n = n + 1;
    INSERT INTO tallies (name, key, n)
    SELECT 'action', COALESCE(NEW.reason, ''), 1
     WHERE NEW.health = 'action-required' AND NEW.gone_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = NEW.user_id AND u.removed_at IS NOT NULL)
    ON CONFLICT (name, key) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER tally_connector_delete AFTER DELETE ON connections
WHEN OLD.gone_at IS NULL
 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = OLD.user_id AND u.removed_at IS NOT NULL)
BEGIN
    UPDATE tallies SET n = n - 1
     WHERE name = 'connector'
       AND key = OLD.institution_id || '|' || OLD.method || '|' || COALESCE(OLD.health, '');
    UPDATE tallies SET n = n - 1
     WHERE name = 'action' AND key = COALESCE(OLD.reason, '') AND OLD.health = 'action-required';
END;

-- A user removed or back: each of their watched connections leaves or rejoins its counts.
CREATE TRIGGER tally_connector_user_removed AFTER UPDATE OF removed_at ON users
WHEN (OLD.removed_at IS NULL) != (NEW.removed_at IS NULL)
BEGIN
    INSERT INTO tallies (name, key, n)
    SELECT 'connector', c.institution_id || '|' || c.method || '|' || COALESCE(c.health, ''),
           (CASE WHEN NEW.removed_at IS NULL THEN 1 ELSE -1 END) * COUNT(*)
      FROM connections c WHERE c.user_id = NEW.user_id AND c.gone_at IS NULL
     GROUP BY c.institution_id, c.method, COALESCE(c.health, '')
    ON CONFLICT (name, key) DO UPDATE SET n = n + excluded.n;
    INSERT INTO tallies (name, key, n)
    SELECT 'action', COALESCE(c.reason, ''),
           (CASE WHEN NEW.removed_at IS NULL THEN 1 ELSE -1 END) * COUNT(*)
      FROM connections c
     WHERE c.user_id = NEW.user_id AND c.gone_at IS NULL AND c.health = 'action-required'
     GROUP BY COALESCE(c.reason, '')
    ON CONFLICT (name, key) DO UPDATE SET n = n + excluded.n;
END;

-- The oldest connection waiting for its user, per reason: the index's first entry.
CREATE INDEX connections_action_since ON connections (reason, health_since)
 WHERE health = 'action-required' AND gone_at IS NULL;

-- One row per hour and connector: its watched connections per health at the hour's end,
-- its bank-side failures and our refreshes in the hour. Kept `retain_days`.
CREATE TABLE rollups (
    hour           INTEGER NOT NULL,
    institution_id TEXT NOT NULL,
    method         TEXT NOT NULL,
    healthy        INTEGER NOT NULL DEFAULT 0,
    action         INTEGER NOT NULL DEFAULT 0,
    outage         INTEGER NOT NULL DEFAULT 0,
    other          INTEGER NOT NULL DEFAULT 0,
    failures       INTEGER NOT NULL DEFAULT 0,
    refreshes      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (institution_id, method, hour)
) STRICT, WITHOUT ROWID;

-- Our refreshes by time: the rollups' hourly counts, the console's refreshes per hour.
CREATE INDEX refresh_attempts_at ON refresh_attempts (reserved_at);

-- The notifications about one user (a connection's page).
CREATE INDEX outbox_user ON outbox (user_id) WHERE user_id IS NOT NULL;
