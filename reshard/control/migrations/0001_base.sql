-- reshard control database. Everything needed to resume after any crash lives here
-- (or, for what must commit atomically with target rows, on the targets themselves:
-- see reshard/cluster/shard_sql/). Applied by reshard.schema_migrations as version 1, written with
-- IF NOT EXISTS so it also adopts a control database from before versioning.

CREATE SCHEMA IF NOT EXISTS reshard;

-- Shard-map versions. The epoch is the version: unique and strictly increasing.
CREATE TABLE IF NOT EXISTS reshard.shard_maps (
    epoch         bigint PRIMARY KEY,
    name          text NOT NULL DEFAULT '',
    body          jsonb NOT NULL,
    digest        text NOT NULL,
    note          text NOT NULL DEFAULT '',
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- Which map version routes traffic. One row; changing it is the routing flip.
CREATE TABLE IF NOT EXISTS reshard.active_map (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch       bigint NOT NULL REFERENCES reshard.shard_maps (epoch),
    switched_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS reshard.migrations (
    name       text PRIMARY KEY,
    from_epoch bigint NOT NULL REFERENCES reshard.shard_maps (epoch),
    to_epoch   bigint NOT NULL REFERENCES reshard.shard_maps (epoch),
    state      text NOT NULL,
    moves      jsonb NOT NULL,
    settings   jsonb NOT NULL DEFAULT '{}',
    error      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per source cluster of a migration: the slot, its exported-snapshot
-- position, the publication, the connector and the Kafka topics it writes.
CREATE TABLE IF NOT EXISTS reshard.migration_sources (
    migration      text NOT NULL REFERENCES reshard.migrations (name),
    cluster        text NOT NULL,
    slot_name      text NOT NULL,
    publication    text NOT NULL,
    consistent_lsn pg_lsn,
    connector      text,
    topics         text[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    dropped_at     timestamptz,
    PRIMARY KEY (migration, cluster)
);

-- Copy progress mirrored from the targets (the targets hold the authoritative cursor,
-- committed with the rows). Used for status and ETA.
CREATE TABLE IF NOT EXISTS reshard.copy_progress (
    migration    text NOT NULL REFERENCES reshard.migrations (name),
    move_id      text NOT NULL,
    tbl          text NOT NULL,
    rows_copied  bigint NOT NULL DEFAULT 0,
    bytes_copied bigint NOT NULL DEFAULT 0,
    rows_estimate bigint,
    snapshot_lsn pg_lsn,
    done         boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, move_id, tbl)
);
-- what limits the copy now ("unthrottled", or the limit and why); NULL once done
ALTER TABLE reshard.copy_progress ADD COLUMN IF NOT EXISTS throttle text;

-- Live workers (appliers) report here every few seconds, for status.
CREATE TABLE IF NOT EXISTS reshard.workers (
    migration  text NOT NULL,
    worker     text NOT NULL,
    kind       text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    stats      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (migration, worker)
);
-- set when a worker stops cleanly (SIGTERM/SIGINT): it stops counting as live at once
ALTER TABLE reshard.workers ADD COLUMN IF NOT EXISTS stopped_at timestamptz;

-- What each applier measured, every few seconds while it ran: the history `reshard report`
-- plots (apply rate from successive totals, lag in seconds and records). Small: one row per
-- worker per sample interval (10 s by default), kept with the migration's other records.
CREATE TABLE IF NOT EXISTS reshard.apply_samples (
    migration    text NOT NULL,
    worker       text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    records      bigint NOT NULL,
    applied      bigint NOT NULL,
    lag_seconds  double precision,
    lag_records  bigint,
    PRIMARY KEY (migration, worker, at)
);

CREATE TABLE IF NOT EXISTS reshard.audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    migration text,
    actor     text NOT NULL,
    event     text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_migration ON reshard.audit_log (migration, id);

-- The audit log is also the outbox of the `reshard.events` topic: a relay publishes the
-- rows after last_id and advances it in one transaction, holding the row's lock so that
-- one relay at a time publishes (reshard/observe/events.py).
CREATE TABLE IF NOT EXISTS reshard.event_relay (
    topic   text PRIMARY KEY,
    last_id bigint NOT NULL DEFAULT 0
);

-- After cutover: one reverse stream per target cluster (target -> sources), so that
-- rollback stays possible. start_lsn is taken before the target accepts a write.
CREATE TABLE IF NOT EXISTS reshard.reverse_streams (
    migration  text NOT NULL REFERENCES reshard.migrations (name),
    cluster    text NOT NULL,
    slot_name  text NOT NULL,
    publication text NOT NULL,
    start_lsn  pg_lsn NOT NULL,
    connector  text NOT NULL,
    topics     text[] NOT NULL DEFAULT '{}',
    generation integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, cluster)
);

-- Cutover waves: each moves a set of buckets (or all moves) and has its own map epoch.
CREATE TABLE IF NOT EXISTS reshard.waves (
    migration  text NOT NULL REFERENCES reshard.migrations (name),
    wave       integer NOT NULL,
    buckets    jsonb,           -- the wave's buckets, or null for "every move"
    epoch      bigint NOT NULL REFERENCES reshard.shard_maps (epoch),
    state      text NOT NULL,   -- cut | rolled_back
    pause_ms   numeric,
    drain_ms   numeric,
    cut_at     timestamptz,
    PRIMARY KEY (migration, wave)
);

-- Every cutover / rollback / complete attempt, and each step of it, before and after
-- it runs: what a rerun after a crash reads to continue or back out.
CREATE TABLE IF NOT EXISTS reshard.cutover_attempts (
    migration   text NOT NULL REFERENCES reshard.migrations (name),
    attempt     integer NOT NULL,
    kind        text NOT NULL,  -- cutover | rollback | complete
    wave        integer,
    state       text NOT NULL,  -- running | done | aborted | backed_out
    plan        jsonb NOT NULL DEFAULT '{}',
    result      jsonb NOT NULL DEFAULT '{}',
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (migration, attempt)
);

CREATE TABLE IF NOT EXISTS reshard.cutover_steps (
    migration   text NOT NULL,
    attempt     integer NOT NULL,
    seq         integer NOT NULL,
    step        text NOT NULL,
    status      text NOT NULL,  -- started | done | failed
    detail      jsonb NOT NULL DEFAULT '{}',
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (migration, attempt, seq),
    FOREIGN KEY (migration, attempt) REFERENCES reshard.cutover_attempts (migration, attempt)
);

-- Who holds each migration's lease (the lock itself is a session advisory lock, see
-- ControlStore.lease); rows of holders whose session ended are ignored and overwritten.
CREATE TABLE IF NOT EXISTS reshard.leases (
    migration   text PRIMARY KEY,
    holder      text NOT NULL,
    purpose     text NOT NULL,
    backend_pid integer NOT NULL,
    since       timestamptz NOT NULL DEFAULT now()
);
