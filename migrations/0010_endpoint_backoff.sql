-- A failing endpoint is held as a whole, not each of its deliveries alone: with many
-- notifications pending, a receiver refusing connections got one attempt per notification
-- per backoff step. After a round whose attempts all failed nothing is sent there until the
-- endpoint's backoff (doubling per failed round) has passed; then one delivery probes it,
-- and the rest follow once one got through.
-- failing: rounds in a row whose every attempt failed (0: the last one got through).
ALTER TABLE delivery_cursors ADD COLUMN failing INTEGER NOT NULL DEFAULT 0;
-- Nothing is sent to the endpoint before this (unix seconds), NULL: not held.
ALTER TABLE delivery_cursors ADD COLUMN hold_until INTEGER;
