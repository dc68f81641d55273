-- Schema changes captured on a migration's streaming clusters (reshard/ddl/follower.py):
-- one row per logged change and direction, with the ops it asks of the destinations, and
-- one row per op applied on a destination, with the source positions it was applied at.
CREATE TABLE reshard.ddl_changes (
    migration   text NOT NULL REFERENCES reshard.migrations (name) ON DELETE CASCADE,
    direction   text NOT NULL,
    cluster     text NOT NULL,        -- where the change was made
    entry_id    bigint NOT NULL,      -- its id in that cluster's reshard.ddl_log
    tbl         text NOT NULL,
    statement   text NOT NULL,
    lsn         text NOT NULL,        -- the cluster's WAL position when it was made
    ops         jsonb NOT NULL,
    status      text NOT NULL,        -- placing | applied | paused | resolved | ignored
    reason      text,
    pass_mark   text,                 -- a WAL position after its commit: passed once applied through it
    passed_at   timestamptz,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, direction, cluster, entry_id)
);

CREATE TABLE reshard.ddl_applied (
    migration   text NOT NULL REFERENCES reshard.migrations (name) ON DELETE CASCADE,
    direction   text NOT NULL,
    destination text NOT NULL,
    statement   text NOT NULL,
    tbl         text NOT NULL,
    phase       text NOT NULL,
    positions   jsonb NOT NULL,       -- cluster -> the WAL position of its change, for each that had it
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, direction, destination, statement)
);
