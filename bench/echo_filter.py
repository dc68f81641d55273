"""What the echo filter saves after a cutover: records through Kafka and records the applier reads.

Setup on the embedded stack: accounts on source1, moved to target1/target2 (a quarter of
the keys stay), copied, cut over. Then routers write ``--rate`` upserts/s for
``--seconds``: writes to moved keys land on the targets and come back to the source
through the reverse streams; the reverse applier's writes on the source are captured by
the forward stream (the echoes). Each round runs twice, in alternating order: with
reshard's echo filter in Connect (``connect.echo_filter: true``, the default) and without
it (the applier skips the echoes). Reported per variant, medians over the rounds: records
the forward stream produced after the cutover per application write, records the
applier read per application write, and echoes the applier had to skip.

    .venv/bin/python bench/echo_filter.py [--rounds 3] [--rate 300] [--seconds 15] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_pg_version, fresh_databases, load_average, seed_split, stack_config  # noqa: E402
from reshard.cluster import fence  # noqa: E402
from reshard.coordinator import Coordinator  # noqa: E402
from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover, rollback  # noqa: E402
from reshard.kafka.admin import KafkaAdmin  # noqa: E402
from reshard.kafka.streams import forward  # noqa: E402
from reshard.maps.shardmap import parse_map  # noqa: E402
from tests.e2e.cutover_helpers import AFTER, BEFORE, RouterLoad  # noqa: E402

DB = "bench_echo"
NAME = "benchecho"


def one_run(config, name: str, rows: int, rate: float, seconds: float) -> dict:
    """Copy, cut over, write for ``seconds``, let the applier catch up; what it read."""
    co = Coordinator.open(config)
    for c in ("target1", "target2"):
        with psycopg.connect(config.cluster(c).dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE public.accounts")
    co.create(name, parse_map(AFTER, config.clusters), parse_map(BEFORE, config.clusters))
    epoch, m = co.store.active()
    fence.fence_map(config, epoch, m)  # the routers' fences on today's owners
    co.start(name)
    stop = threading.Event()
    result: dict = {}
    applier = threading.Thread(target=lambda: result.update(stats=co.apply(name, stop)), daemon=True)
    applier.start()
    load = None
    try:
        co.wait(name, timeout=120)
        cut = cutover(config, co.store, name, SwitchOptions(max_write_pause=2.0, require_verified=False))
        if cut.outcome != Outcome.DONE:
            raise SystemExit(f"cutover {cut.outcome}: {cut.message}")
        topics = [forward(name, "source1").topic("public.accounts")]
        admin = KafkaAdmin(config.kafka)
        ends_before = sum(admin.end_offsets(topics).values())
        load = RouterLoad(config, threads=4, rate=rate, keyspace=rows, seed=5).start()
        time.sleep(seconds)
        writes = load.stop().writes
        load = None
        co.wait(name, timeout=120)
        time.sleep(2.0)  # the last echoes (if produced) reach the applier
        forward_records = sum(admin.end_offsets(topics).values()) - ends_before
        back = rollback(config, co.store, name, SwitchOptions(max_write_pause=2.0))
        if back.outcome != Outcome.DONE:
            raise SystemExit(f"rollback {back.outcome}: {back.message}")
    finally:
        if load is not None:
            load.stop()
        stop.set()
        applier.join(timeout=60)
        co.teardown(name)
    s = result["stats"]
    return {"writes": writes, "forward_records_after_cutover": forward_records,
            "applier_records": s.records, "reverse_records": s.reverse_records, "echoes_skipped": s.echoes,
            "forward_records_per_write": round(forward_records / writes, 3),
            "applier_records_per_write": round(s.records / writes, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=300, help="router writes per second after the cutover")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()

    base = fresh_databases(stack_config(args.pg_version), DB, NAME)
    seed_split(base, args.rows, ["target1", "target2"])  # the table and its rows; the maps are AFTER/BEFORE
    variants = {
        "filtered": base,
        "unfiltered": dataclasses.replace(base, connect=dataclasses.replace(base.connect, echo_filter=False)),
    }
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for kind in order:
            run = one_run(variants[kind], f"{NAME}{r + 1}{kind[0]}", args.rows, args.rate, args.seconds)
            run["load"] = load_average()
            runs[kind].append(run)
            print(f"round {r + 1} {kind}: {run}", file=sys.stderr, flush=True)

    def med(kind: str, key: str) -> float:
        return round(statistics.median(x[key] for x in runs[kind]), 3)

    keys = ["writes", "forward_records_after_cutover", "forward_records_per_write", "applier_records_per_write",
            "echoes_skipped", "reverse_records"]
    doc = {"benchmark": "echo_filter", "rounds": args.rounds, "rate": args.rate, "seconds": args.seconds,
           **{kind: {k: med(kind, k) for k in keys} for kind in variants}, "all": runs}
    doc["applier_records_ratio"] = round(doc["filtered"]["applier_records_per_write"]
                                         / doc["unfiltered"]["applier_records_per_write"], 2)
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"after a cutover, ~{args.rate:.0f} router writes/s for {args.seconds:.0f} s, "
          f"medians of {args.rounds} alternating rounds")
    print(f"  {'':<12} {'forward records/write':>22} {'applier records/write':>22} {'echoes skipped':>15}")
    for kind in variants:
        d = doc[kind]
        print(f"  {kind:<12} {d['forward_records_per_write']:>22} {d['applier_records_per_write']:>22} "
              f"{d['echoes_skipped']:>15,.0f}")
    print(f"  applier records read, filtered / unfiltered: {doc['applier_records_ratio']}")


if __name__ == "__main__":
    main()
