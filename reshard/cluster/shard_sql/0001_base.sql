-- reshard's bookkeeping on a shard cluster (source or target), in its own schema.
-- Installed by reshard.cluster.shard_schema (reshard.schema_migrations) before a migration touches the
-- cluster; written with IF NOT EXISTS so it also adopts a cluster from before versioning.

CREATE SCHEMA IF NOT EXISTS reshard;

-- Per key, the source position (change LSN) of the last change applied to it.
-- Written in the same transaction as the row it covers, so a replayed or reordered
-- event compares against it and is skipped: applying twice has no second effect.
-- Deleted keys keep their row (deleted = true) so a late replay cannot resurrect them.
CREATE TABLE IF NOT EXISTS reshard.applied_rows (
    migration text    NOT NULL,
    tbl       text    NOT NULL,
    pk        text    NOT NULL,
    lsn       bigint  NOT NULL,
    deleted   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (migration, tbl, pk)
);

-- The next Kafka offset per partition whose effects are committed on this target.
CREATE TABLE IF NOT EXISTS reshard.applied_offsets (
    migration   text        NOT NULL,
    topic       text        NOT NULL,
    kpartition  integer     NOT NULL,
    next_offset bigint      NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, topic, kpartition)
);

-- The snapshot copy's keyset cursor, committed with each copied batch: a crash
-- loses at most the batch in flight, which rolled back with it.
CREATE TABLE IF NOT EXISTS reshard.copy_cursor (
    migration    text        NOT NULL,
    move_id      text        NOT NULL,
    tbl          text        NOT NULL,
    cursor       jsonb,
    rows_copied  bigint      NOT NULL DEFAULT 0,
    bytes_copied bigint      NOT NULL DEFAULT 0,
    snapshot_lsn pg_lsn      NOT NULL,
    resumed_lsn  pg_lsn,
    done         boolean     NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, move_id, tbl)
);

-- On sources: one row per migration, in the migration's publication. Writing it
-- guarantees Debezium decodes a commit after a given position (the catch-up and
-- drain proofs wait for the slot to confirm that position).
CREATE TABLE IF NOT EXISTS reshard.heartbeat (
    migration text        PRIMARY KEY,
    beat      bigint      NOT NULL DEFAULT 0,
    at        timestamptz NOT NULL DEFAULT now()
);
