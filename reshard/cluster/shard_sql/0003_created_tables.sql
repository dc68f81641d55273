-- Moving tables reshard created on a target from the source's definition (the target did
-- not have them): finished once their indexes, constraints and triggers were added after
-- the copy; an aborted migration drops the ones that are empty again.
CREATE TABLE IF NOT EXISTS reshard.created_tables (
    migration  text        NOT NULL,
    tbl        text        NOT NULL,
    source     text        NOT NULL,
    finished   boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, tbl)
);
