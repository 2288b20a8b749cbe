-- Notification endpoints have names ([[notify.endpoints]] name; "default" for a lone one
-- without): an endpoint's deliveries and cursor are keyed by its name, no longer by its
-- URL, so a changed URL (a rotated ?token=) keeps them, and no credential of a URL is
-- stored.
--
-- The rule for rows from before: a database that knew one endpoint gives its rows to
-- "default". With several, the rows stay keyed by URL here; when the daemon starts, each
-- configured endpoint whose URL is unchanged takes the rows of its URL, and the rows of an
-- endpoint no longer configured keep its URL with the credentials redacted
-- (notify::deliver::adopt_endpoint_names).
CREATE TEMP TABLE endpoint_keys AS
    SELECT endpoint FROM deliveries UNION SELECT endpoint FROM delivery_cursors;

UPDATE deliveries SET endpoint = 'default'
 WHERE (SELECT COUNT(*) FROM endpoint_keys) = 1;
UPDATE delivery_cursors SET endpoint = 'default'
 WHERE (SELECT COUNT(*) FROM endpoint_keys) = 1;

DROP TABLE endpoint_keys;
