-- Routers (the library applications link) report their counters here every few seconds:
-- reads, writes, errors, fence rejections, hedged reads and the shadow reads' outcomes
-- per table. The exporter shows them; a bake watches their deltas (error rate, fence
-- rejections) as rollback triggers. Counters are cumulative per router instance; a
-- restarted router is a new row.
CREATE TABLE reshard.router_reports (
    router      text PRIMARY KEY,          -- host:pid:random, one per Router object
    host        text NOT NULL,
    pid         integer NOT NULL,
    epoch       bigint NOT NULL,           -- the map epoch it routes by
    started_at  timestamptz NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    counters    jsonb NOT NULL,            -- {"reads": n, "writes": n, "errors": n, ...}
    shadow      jsonb NOT NULL DEFAULT '{}'  -- {"public.kv": {"sampled": n, "mismatches": n, ...}}
);
CREATE INDEX router_reports_at ON reshard.router_reports (at);
