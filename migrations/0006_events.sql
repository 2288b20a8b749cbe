-- Events in (Basiq's webhooks and the /events poll) and notifications out (the outbox).
--
-- inbox: every event heard, once. A webhook delivery is stored before it is answered 2xx;
-- a retry or duplicate (same webhook-id, or the same Basiq event id heard twice, once by
-- webhook and once by the poll) is ignored by the unique keys. Processing marks
-- `processed_at`; an unprocessed row is taken again after a crash.
CREATE TABLE inbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The Standard Webhooks `webhook-id`, or 'poll:' || event id for a polled event.
    delivery_id  TEXT NOT NULL UNIQUE,
    -- Basiq's event id (`eventId`, `/events` `id`), when the payload names one.
    event_id     TEXT UNIQUE,
    event_type   TEXT,
    source       TEXT NOT NULL CHECK (source IN ('webhook', 'poll')),
    user_id      TEXT,
    entity_link  TEXT,
    body         TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER,
    outcome      TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX inbox_unprocessed ON inbox (seq) WHERE processed_at IS NULL;
CREATE INDEX inbox_received ON inbox (received_at);

-- outbox: one row per notification, written in the same transaction as the change that
-- causes it. `webhook_id` is the Standard Webhooks message id, the same on every retry.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id  TEXT NOT NULL UNIQUE,
    event_type  TEXT NOT NULL,
    user_id     TEXT,
    -- Deliveries with the same key reach an endpoint in order: the user's id, or
    -- 'institution:' || institution || '/' || method for an outage's notices.
    order_key   TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX outbox_created ON outbox (created_at);

-- The last health each connection was notified with: a change that reverts before it is
-- settled (healthy -> in-progress -> healthy) is not sent.
CREATE TABLE notified (
    connection_id TEXT PRIMARY KEY,
    health        TEXT NOT NULL,
    reason        TEXT
) STRICT, WITHOUT ROWID;

-- deliveries: one row per notification and endpoint, made by the endpoint's deliverer from
-- the outbox after its cursor.
CREATE TABLE deliveries (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint       TEXT NOT NULL,
    outbox_id      INTEGER NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    order_key      TEXT NOT NULL,
    -- superseded: a health notice whose connection no longer has that health when its turn
    -- came (e.g. an outage found since): not sent, so nobody is asked to act for nothing.
    state          TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'dead', 'superseded')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    -- Attempts answered with an error or not answered.
    failures       INTEGER NOT NULL DEFAULT 0,
    next_at        INTEGER NOT NULL,
    deadline       INTEGER NOT NULL,
    last_status    INTEGER,
    last_error     TEXT,
    done_at        INTEGER,
    UNIQUE (endpoint, outbox_id)
) STRICT;

CREATE INDEX deliveries_pending ON deliveries (endpoint, next_at) WHERE state = 'pending';
CREATE INDEX deliveries_order ON deliveries (endpoint, order_key, outbox_id) WHERE state = 'pending';

CREATE TABLE delivery_cursors (
    endpoint TEXT PRIMARY KEY,
    last_outbox_id INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
