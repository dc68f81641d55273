-- Where each stream's replication slot was made: the cluster's system identifier and the
-- primary's timeline at the slot's creation. After a failover (a new timeline) the slot on
-- the new primary is the same stream only if it came over with the promotion (17+ failover
-- slots); reshard/cluster/failover.py judges it, and a stream whose slot was lost is marked
-- here so no catch-up proof or cutover trusts it again.
CREATE TABLE reshard.slot_origins (
    migration  text NOT NULL REFERENCES reshard.migrations (name) ON DELETE CASCADE,
    cluster    text NOT NULL,
    slot_name  text NOT NULL,
    system_id  text NOT NULL,
    timeline   integer NOT NULL,
    lineage    text NOT NULL DEFAULT 'same',   -- same | carried | lost
    why        text,
    noted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, slot_name)
);
