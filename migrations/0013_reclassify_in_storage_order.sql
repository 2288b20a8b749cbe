-- A reclassification walks a bank's connections in the order they are stored (issue 23).
-- Walked in connection-id order, random UUIDs put each row on another table page: at a
-- million users, two million page reads. The index on institution_id alone holds each
-- institution's connections in rowid order (SQLite appends the rowid to every index entry),
-- which is the table's order, and the queue's cursor is a rowid.
DROP INDEX connections_institution;
CREATE INDEX connections_institution ON connections (institution_id);

-- The rowid of the last connection done (`cursor`, its connection id, stays for reading). A
-- walk in progress at the upgrade starts over in the new order: a connection done twice is
-- left as it is the second time, and one an ended outage held counts once (it is held no
-- longer once done).
ALTER TABLE reclassify_queue ADD COLUMN cursor_rowid INTEGER NOT NULL DEFAULT 0;
UPDATE reclassify_queue SET cursor = '';
