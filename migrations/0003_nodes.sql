-- Several push nodes sharing one database (PostgreSQL).

-- The node whose spool holds a recording's files: only it pushes them.
ALTER TABLE recordings ADD COLUMN node TEXT;
CREATE INDEX recordings_by_node ON recordings (node, state);

-- Leases: a delivery, a tombstone's objects and a bulk job are worked by one node at a time.
-- Claimed under row locks other nodes skip; a node that dies lets its lease run out.
ALTER TABLE deliveries ADD COLUMN leased_by TEXT;
ALTER TABLE deliveries ADD COLUMN lease_until BIGINT;
ALTER TABLE recordings ADD COLUMN objects_leased_by TEXT;
ALTER TABLE recordings ADD COLUMN objects_lease_until BIGINT;
ALTER TABLE delete_jobs ADD COLUMN leased_by TEXT;
ALTER TABLE delete_jobs ADD COLUMN lease_until BIGINT;
