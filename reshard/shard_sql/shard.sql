-- reshard's bookkeeping on a shard cluster (source or target), in its own schema.
-- Idempotent; installed by reshard.shard_schema before a migration touches the cluster.

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

-- The snapshot copy's keyset cursors, one per chunk of a (move, table) unit, committed
-- with each copied batch: a crash loses at most the batches in flight, which rolled
-- back with them. A chunk covers the keys (chunk_lower, chunk_upper] (NULL: unbounded);
-- its cursor starts at chunk_lower and ends at chunk_upper (done).
CREATE TABLE IF NOT EXISTS reshard.copy_cursor (
    migration    text        NOT NULL,
    move_id      text        NOT NULL,
    tbl          text        NOT NULL,
    chunk        integer     NOT NULL DEFAULT 0,
    chunk_lower  jsonb,
    chunk_upper  jsonb,
    cursor       jsonb,
    rows_copied  bigint      NOT NULL DEFAULT 0,
    bytes_copied bigint      NOT NULL DEFAULT 0,
    snapshot_lsn pg_lsn      NOT NULL,
    resumed_lsn  pg_lsn,
    done         boolean     NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, move_id, tbl, chunk)
);
-- a cluster installed before chunks: its cursors are chunk 0, unbounded
ALTER TABLE reshard.copy_cursor ADD COLUMN IF NOT EXISTS chunk integer NOT NULL DEFAULT 0;
ALTER TABLE reshard.copy_cursor ADD COLUMN IF NOT EXISTS chunk_lower jsonb;
ALTER TABLE reshard.copy_cursor ADD COLUMN IF NOT EXISTS chunk_upper jsonb;
DO $$
BEGIN
    IF (SELECT array_length(conkey, 1) FROM pg_constraint
        WHERE conrelid = 'reshard.copy_cursor'::regclass AND contype = 'p') = 3 THEN
        ALTER TABLE reshard.copy_cursor DROP CONSTRAINT copy_cursor_pkey,
            ADD PRIMARY KEY (migration, move_id, tbl, chunk);
    END IF;
END
$$;

-- On sources: one row per migration, in the migration's publication. Writing it
-- guarantees Debezium decodes a commit after a given position (the catch-up and
-- drain proofs wait for the slot to confirm that position).
CREATE TABLE IF NOT EXISTS reshard.heartbeat (
    migration text        PRIMARY KEY,
    beat      bigint      NOT NULL DEFAULT 0,
    at        timestamptz NOT NULL DEFAULT now()
);
