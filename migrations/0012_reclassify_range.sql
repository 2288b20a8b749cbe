-- A first start that does not block (issue 23): a reclassification batch walks the
-- connections at an institution in id order from its cursor, reading each row once, with no
-- sort (the method is checked on the row). The queries that read the connections at a
-- connector (the reclassification, the count of an outage notice, the connections an ended
-- outage held) all read them by institution through this index, so the index on
-- (institution_id, method), which no query needs any more, goes: one B-tree fewer written
-- for every connection.
CREATE INDEX connections_institution ON connections (institution_id, connection_id);
DROP INDEX connections_connector;
-- Every reclassification batch reads the outages at its connector (its down periods, when
-- an inferred outage last ended): through this index, not a scan of every outage ever.
CREATE INDEX outages_connector ON outages (institution_id, method, source, ended_at);
