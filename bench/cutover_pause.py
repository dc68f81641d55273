"""The cutover's write pause under a live write load, over repeated cutover/rollback rounds.

Setup on the embedded stack: accounts seeded on source1 and moved to target1/target2
(a quarter of the keys stay), an applier running as its own `reshard apply` process,
and a load of routers writing several hundred upserts per second over moving and
staying keys. With ``--sources 3``, a fourth shard instead: each of the stack's three
servers is a source holding a third of the keys (a database of its own on source1,
target1 and target2) and a new shard (a second database on source1's server) takes a
quarter of each one's keys, so the switch fences, drains and flips three sources. Each
round cuts over and rolls back. Reported, as median and max over the rounds: the write
pause measured by reshard (fence request -> new epoch active), the drain inside it, and
the longest single write any client saw (retries included).

    .venv/bin/python bench/cutover_pause.py [--rounds 5] [--rate 400] [--sources 1|3] [--json]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_pg_version, fresh_database, fresh_databases, load_average, seed_split, stack_config  # noqa: E402
from reshard.cluster import fence  # noqa: E402
from reshard.config import ClusterConfig, Config, write_config  # noqa: E402
from reshard.coordinator import Coordinator  # noqa: E402
from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover, rollback  # noqa: E402
from reshard.maps.shardmap import parse_map  # noqa: E402
from reshard.stack.workload import TABLE, create_table, seed  # noqa: E402
from tests.e2e.cutover_helpers import AFTER, BEFORE, RouterLoad  # noqa: E402

DB = "bench_cutover"
NAME = "benchcut"


SHARDS = ["source1", "target1", "target2"]  # the stack's three servers, each a source with --sources 3
FOURTH = "shard4"
PAUSE_STEPS = ("fence", "drain_position", "drain", "sequences", "flip_from", "flip_to", "activate")
GROUP = {"key": "bigint", "tables": {TABLE: "id"}}


def fourth_shard_maps() -> tuple[dict, dict]:
    """Three sources with a third of 4,096 buckets each; after, the fourth takes the top quarter of each."""
    before, after = {}, {}
    for i, c in enumerate(SHARDS):
        lo, hi = i * 4096 // 3, (i + 1) * 4096 // 3 - 1
        keep = lo + (hi - lo + 1) * 3 // 4 - 1
        before[c] = f"{lo}-{hi}"
        after[c] = f"{lo}-{keep}"
        after[FOURTH] = ",".join(filter(None, [after.get(FOURTH, ""), f"{keep + 1}-{hi}"]))
    return ({"name": "three", "groups": {"accounts": {**GROUP, "hash": {"buckets": 4096, "clusters": before}}}},
            {"name": "four", "groups": {"accounts": {**GROUP, "hash": {"buckets": 4096, "clusters": after}}}})


def seed_three_sources(config: Config, rows: int, before: dict) -> Config:
    """The fourth shard as a second database on source1's server; each source keeps the
    rows its map gives it."""
    dsn = fresh_database(config.cluster("source1").dsn, f"{DB}_4")
    config = replace(config, clusters={**config.clusters, FOURTH: ClusterConfig(FOURTH, dsn, dsn)})
    m = parse_map(before)
    for c in [*SHARDS, FOURTH]:
        with psycopg.connect(config.cluster(c).dsn, autocommit=True) as conn:
            create_table(conn)
            if c in SHARDS:
                seed(conn, rows)
                others = [k for k in range(1, rows + 1) if m.owner(TABLE, [k]) != c]
                conn.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)", (others,))
                conn.execute(f"VACUUM ANALYZE {TABLE}")
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=float, default=400, help="router writes per second")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--sources", type=int, choices=(1, 3), default=1,
                    help="1: source1 splits to two targets; 3: three sources give a quarter each to a fourth shard")
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()

    config = fresh_databases(stack_config(args.pg_version), DB, NAME)
    if args.sources == 1:
        seed_split(config, args.rows, ["target1", "target2"])  # the table and its rows; the maps are AFTER/BEFORE
        before, after = BEFORE, AFTER
    else:
        before, after = fourth_shard_maps()
        config = seed_three_sources(config, args.rows, before)
    co = Coordinator.open(config)
    co.create(NAME, parse_map(after, config.clusters), parse_map(before, config.clusters))
    epoch, m = co.store.active()
    fence.fence_map(config, epoch, m)
    co.start(NAME)
    tmp = Path(tempfile.mkdtemp(prefix="reshard-bench-"))
    cfg = tmp / "reshard.yaml"
    write_config(config, cfg)
    applier = subprocess.Popen([sys.executable, "-m", "reshard.cli", "--config", str(cfg), "--progress", "off",
                                "apply", NAME], stdout=subprocess.DEVNULL, stderr=open(tmp / "apply.log", "wb"))
    rounds = []
    load = None
    try:
        co.wait(NAME, timeout=120)
        load = RouterLoad(config, threads=4, rate=args.rate, keyspace=args.rows, seed=11).start()
        time.sleep(3)
        v = co.verify(NAME)
        if not v.equal:
            raise SystemExit(f"verification under load failed: {v.to_dict()}")
        for r in range(args.rounds):
            before_stall = load.stats.max_stall_ms
            load.stats.max_stall_ms = 0.0
            # verified once, before the first round (a rollback makes a verification stale)
            cut = cutover(config, co.store, NAME, SwitchOptions(max_write_pause=2.0, require_verified=r == 0))
            if cut.outcome != Outcome.DONE:
                raise SystemExit(f"round {r + 1}: cutover {cut.outcome}: {cut.message}")
            cut_attempt = co.store.attempts(NAME)[-1]["attempt"]
            time.sleep(2)
            cut_stall = load.stats.max_stall_ms
            load.stats.max_stall_ms = 0.0
            back = rollback(config, co.store, NAME, SwitchOptions(max_write_pause=2.0))
            if back.outcome != Outcome.DONE:
                raise SystemExit(f"round {r + 1}: rollback {back.outcome}: {back.message}")
            time.sleep(2)
            took = {st["step"]: st["ms"] for st in cut.steps}
            in_pause = {k: took.get(k, 0.0) for k in PAUSE_STEPS}
            drained = co.store.steps(NAME, cut_attempt)["drain"]["detail"]  # the cutover's, not the rollback's
            rounds.append({"cutover_pause_ms": cut.pause_ms, "cutover_drain_ms": cut.drain_ms,
                           # the drain: Debezium confirming the position, then the appliers' offsets reaching the ends
                           "cutover_drain_confirm_ms": drained["confirm_ms"], "cutover_drain_apply_ms": drained["apply_ms"],
                           **{f"cutover_{k}_ms": v for k, v in in_pause.items() if k != "drain"},
                           # the pause outside the steps themselves: each step's records in the control
                           # database, the lease re-checked before each
                           "cutover_bookkeeping_ms": round(cut.pause_ms - sum(in_pause.values()), 1),
                           "cutover_longest_write_ms": round(cut_stall, 1),
                           "rollback_pause_ms": back.pause_ms, "rollback_drain_ms": back.drain_ms,
                           "rollback_longest_write_ms": round(load.stats.max_stall_ms, 1)})
            load.stats.max_stall_ms = max(before_stall, cut_stall)
            print(f"round {r + 1}: cutover pause {cut.pause_ms:.0f} ms (drain {cut.drain_ms:.0f}), longest write "
                  f"{cut_stall:.0f} ms; rollback pause {back.pause_ms:.0f} ms", file=sys.stderr, flush=True)
    finally:
        stats = load.stop() if load else None
        applier.send_signal(signal.SIGTERM)
        applier.wait(timeout=60)
        co.teardown(NAME)

    def summary(key: str) -> dict:
        values = [r[key] for r in rounds]
        return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}

    doc = {"benchmark": "cutover_pause", "sources": args.sources, "rounds": len(rounds), "write_rate": args.rate,
           "rows": args.rows, "load": load_average(),
           "writes_acknowledged": stats.writes if stats else 0, "writes_rejected": stats.rejected if stats else 0,
           **{k: summary(k) for k in rounds[0]}, "all": rounds}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{len(rounds)} cutover/rollback rounds, {args.sources} source(s), under ~{args.rate:.0f} router writes/s "
          f"({doc['writes_acknowledged']:,} writes acknowledged, {doc['writes_rejected']} rejected; load {doc['load']})")
    for k in rounds[0]:
        print(f"  {k:<26} median {doc[k]['median']:>7.0f} ms   max {doc[k]['max']:>7.0f} ms")


if __name__ == "__main__":
    main()
