-- (No INSERT OR IGNORE in these triggers: an UPSERT that fires them imposes its own
-- conflict policy on every statement inside.)
--
-- Counts kept, not counted: what /metrics, `status` and /v1/status show is read from
-- `tallies`, maintained by triggers in the same transaction as the change that moves it,
-- so a scrape costs the same at 10 users and 10 million.
--
--   ('users', 'active')           users neither gone nor removed
--   ('connections', HEALTH)       watched connections (not gone, user not removed) per
--                                 health; '' for a connection not classified yet
--   ('reservations', TRIGGER '/' OUTCOME)  refresh attempts kept in history
CREATE TABLE tallies (
    name TEXT NOT NULL,
    key  TEXT NOT NULL,
    n    INTEGER NOT NULL,
    PRIMARY KEY (name, key)
) STRICT, WITHOUT ROWID;

INSERT INTO tallies (name, key, n)
SELECT 'users', 'active', COUNT(*) FROM users WHERE gone_at IS NULL AND removed_at IS NULL;

INSERT INTO tallies (name, key, n)
SELECT 'connections', COALESCE(c.health, ''), COUNT(*) FROM connections c
 WHERE c.gone_at IS NULL
   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = c.user_id AND u.removed_at IS NOT NULL)
 GROUP BY COALESCE(c.health, '');

INSERT INTO tallies (name, key, n)
SELECT 'reservations', trigger || '/' || outcome, COUNT(*) FROM refresh_attempts
 GROUP BY trigger, outcome;

-- Users.
CREATE TRIGGER tally_users_insert AFTER INSERT ON users
WHEN NEW.gone_at IS NULL AND NEW.removed_at IS NULL
BEGIN
    INSERT INTO tallies (name, key, n) SELECT 'users', 'active', 0
     WHERE NOT EXISTS (SELECT 1 FROM tallies WHERE name = 'users' AND key = 'active');
    UPDATE tallies SET n = n + 1 WHERE name = 'users' AND key = 'active';
END;

CREATE TRIGGER tally_users_update AFTER UPDATE OF gone_at, removed_at ON users
WHEN (OLD.gone_at IS NULL AND OLD.removed_at IS NULL) != (NEW.gone_at IS NULL AND NEW.removed_at IS NULL)
BEGIN
    INSERT INTO tallies (name, key, n) SELECT 'users', 'active', 0
     WHERE NOT EXISTS (SELECT 1 FROM tallies WHERE name = 'users' AND key = 'active');
    UPDATE tallies SET n = n + (CASE WHEN NEW.gone_at IS NULL AND NEW.removed_at IS NULL THEN 1 ELSE -1 END)
     WHERE name = 'users' AND key = 'active';
END;

CREATE TRIGGER tally_users_delete AFTER DELETE ON users
WHEN OLD.gone_at IS NULL AND OLD.removed_at IS NULL
BEGIN
    UPDATE tallies SET n = n - 1 WHERE name = 'users' AND key = 'active';
END;

-- A user removed (or re-added) takes its watched connections out of (or back into) the count.
CREATE TRIGGER tally_users_removed AFTER UPDATE OF removed_at ON users
WHEN (OLD.removed_at IS NULL) != (NEW.removed_at IS NULL)
BEGIN
    INSERT INTO tallies (name, key, n)
    SELECT DISTINCT 'connections', COALESCE(c.health, ''), 0 FROM connections c
     WHERE c.user_id = NEW.user_id AND c.gone_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM tallies t WHERE t.name = 'connections' AND t.key = COALESCE(c.health, ''));
    UPDATE tallies SET n = n + (CASE WHEN NEW.removed_at IS NULL THEN 1 ELSE -1 END) * (
        SELECT COUNT(*) FROM connections c
         WHERE c.user_id = NEW.user_id AND c.gone_at IS NULL AND COALESCE(c.health, '') = tallies.key)
     WHERE name = 'connections';
END;

-- Connections: counted when not gone and their user not removed.
CREATE TRIGGER tally_connections_insert AFTER INSERT ON connections
WHEN NEW.gone_at IS NULL
 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = NEW.user_id AND u.removed_at IS NOT NULL)
BEGIN
    INSERT INTO tallies (name, key, n) SELECT 'connections', COALESCE(NEW.health, ''), 0
     WHERE NOT EXISTS (SELECT 1 FROM tallies WHERE name = 'connections' AND key = COALESCE(NEW.health, ''));
    UPDATE tallies SET n = n + 1 WHERE name = 'connections' AND key = COALESCE(NEW.health, '');
END;

CREATE TRIGGER tally_connections_update AFTER UPDATE OF health, gone_at, user_id ON connections
WHEN OLD.health IS NOT NEW.health OR OLD.gone_at IS NOT NEW.gone_at OR OLD.user_id IS NOT NEW.user_id
BEGIN
    UPDATE tallies SET n = n - 1
     WHERE name = 'connections' AND key = COALESCE(OLD.health, '') AND OLD.gone_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = OLD.user_id AND u.removed_at IS NOT NULL);
    INSERT INTO tallies (name, key, n) SELECT 'connections', COALESCE(NEW.health, ''), 0
     WHERE NOT EXISTS (SELECT 1 FROM tallies WHERE name = 'connections' AND key = COALESCE(NEW.health, ''));
    UPDATE tallies SET n = n + 1
     WHERE name = 'connections' AND key = COALESCE(NEW.health, '') AND NEW.gone_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = NEW.user_id AND u.removed_at IS NOT NULL);
END;

CREATE TRIGGER tally_connections_delete AFTER DELETE ON connections
WHEN OLD.gone_at IS NULL
 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = OLD.user_id AND u.removed_at IS NOT NULL)
BEGIN
    UPDATE tallies SET n = n - 1 WHERE name = 'connections' AND key = COALESCE(OLD.health, '');
END;

-- Refresh attempts kept in history, per trigger and outcome.
CREATE TRIGGER tally_reservations_insert AFTER INSERT ON refresh_attempts
BEGIN
    INSERT INTO tallies (name, key, n) SELECT 'reservations', NEW.trigger || '/' || NEW.outcome, 0
     WHERE NOT EXISTS (SELECT 1 FROM tallies WHERE name = 'reservations' AND key = NEW.trigger || '/' || NEW.outcome);
    UPDATE tallies SET n = n + 1 WHERE name = 'reservations' AND key = NEW.trigger || '/' || NEW.outcome;
END;

CREATE TRIGGER tally_reservations_update AFTER UPDATE OF trigger, outcome ON refresh_attempts
WHEN OLD.trigger IS NOT NEW.trigger OR OLD.outcome IS NOT NEW.outcome
BEGIN
    UPDATE tallies SET n = n - 1 WHERE name = 'reservations' AND key = OLD.trigger || '/' || OLD.outcome;
    INSERT INTO tallies (name, key, n) SELECT 'reservations', NEW.trigger || '/' || NEW.outcome, 0
     WHERE NOT EXISTS (SELECT 1 FROM tallies WHERE name = 'reservations' AND key = NEW.trigger || '/' || NEW.outcome);
    UPDATE tallies SET n = n + 1 WHERE name = 'reservations' AND key = NEW.trigger || '/' || NEW.outcome;
END;

CREATE TRIGGER tally_reservations_delete AFTER DELETE ON refresh_attempts
BEGIN
    UPDATE tallies SET n = n - 1 WHERE name = 'reservations' AND key = OLD.trigger || '/' || OLD.outcome;
END;

-- The connections needing the user's action, listed without a scan (`status`, /v1/status).
CREATE INDEX connections_action_required ON connections (connection_id)
 WHERE health = 'action-required' AND gone_at IS NULL;
