"""What each part of the pipeline costs per change event, in CPU time, against PostgreSQL's own
logical replication doing the same split: the map for making it faster, and independent of the
core count (it says how each part scales on a bigger host).

Setup on the embedded stack: a narrow table (id bigint primary key, a int, b text of 96 chars,
c numeric(12,2), d timestamptz) of --rows rows on source1, split 1 -> 2 by hash. Each round, in
turn for reshard and for native replication (a publication per target with reshard's own
key predicate as its row filter, a subscription on each target):

- once streaming and idle, read every part's CPU time (utime + stime from /proc, children
  that exited included through the parent's cutime/cstime): the source's WAL senders (the
  processes in pg_stat_replication), each target's whole server, and for reshard Kafka,
  Kafka Connect (Debezium) and the `reshard apply` process;
- pgbench writes --events single-row updates of random keys (4 clients);
- wait until the targets hold every change (reshard: the catch-up proof; native: the sum of
  column a on the targets equals the source's), read the CPU times again.

Printed per part: CPU-µs per event (median of the rounds), and the totals' ratio; and the
end-to-end drain rate (events over the time from the burst's first write until every target holds
every change) of each, and reshard's against native's. With
``--workers 1,2`` reshard runs once per worker count each round (the workers share the
partitions; their CPU is summed), and the appliers' CPU per event is compared: equal CPU per
event means a second worker on a free core doubles the apply rate. Beside the table, for
reshard: what an idle worker costs by the second (measured for 5 s once caught up, before the
burst), and how much of the applier's CPU per event that by-the-second cost makes over the
burst's duration (it grows with the number of workers, not with the events).

    .venv/bin/python bench/cost_per_event.py [--rows 100000] [--events 40000] [--rounds 2]
        [--workers 1[,2]] [--no-native] [--async-commit] [--pg-version N] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    ASYNC_COMMIT_HELP,
    add_pg_version,
    fresh_databases,
    load_average,
    median,
    own_cpu,
    pgbench_env,
    seed_narrow,
    stack_config,
    tree_cpu,
)
from reshard.config import Config, state_dir, write_config  # noqa: E402
from reshard.coordinator import Coordinator  # noqa: E402
from reshard.maps.planner import plan  # noqa: E402
from reshard.maps.shardmap import parse_map  # noqa: E402
from reshard.stack import Stack  # noqa: E402
from reshard.stack.demo import demo_maps  # noqa: E402

DB = "bench_cost"
NAME = "benchcost"
TARGETS = ["target1", "target2"]
HOME: list[Path] = []  # the stack's state directory (set by main: --pg-version picks another)
SCRIPT = "\\set id random(1, {rows})\nUPDATE public.accounts SET a = a + 1 WHERE id = :id;\n"


IDLE_S = 5.0
IDLE_SHARE = "(of apply: idle cost)"  # not parts: reported beside the table, left out of the totals
IDLE_RATE = "(idle ms/s per worker)"
DRAIN_RATE = "(end to end, events/s)"  # burst's first write -> every target holds every change
NOT_PARTS = (IDLE_SHARE, IDLE_RATE, DRAIN_RATE)


def walsenders(config: Config) -> list[int]:
    with psycopg.connect(config.cluster("source1").dsn) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_replication").fetchall()]


def parts(config: Config, extra: dict[str, int]) -> dict[str, float]:
    """CPU seconds now of each part."""
    st = {p.name: p.pid for p in Stack(HOME[0]).status() if p.pid}
    out = {"source WAL senders": sum(own_cpu(pid) for pid in walsenders(config))}
    for t in TARGETS:
        out[f"{t} server"] = tree_cpu(st[t])
    for name, pid in extra.items():
        out[name] = tree_cpu(pid)
    return out


ASYNC_COMMIT: list[bool] = []  # set by main: pgbench commits without waiting on the disk flush


def burst(config: Config, rows: int, events: int) -> None:
    env = pgbench_env(bool(ASYNC_COMMIT))
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "update.sql"
        script.write_text(SCRIPT.format(rows=rows))
        subprocess.run(["pgbench", "-n", "-c", "4", "-j", "2", "-t", str(events // 4), "-f", str(script),
                        config.cluster("source1").dsn], check=True, capture_output=True, env=env)


def reshard_round(base: Config, rows: int, events: int, tmp: Path, workers: int = 1) -> dict[str, float]:
    config = fresh_databases(base, DB, NAME)
    seed_narrow(config, rows, TARGETS)
    before, after = demo_maps(TARGETS)
    co = Coordinator.open(config)
    co.create(NAME, parse_map(after, config.clusters), parse_map(before, config.clusters))
    from reshard.snapshotter.throttle import ThrottleSettings

    co.start(NAME, throttle=ThrottleSettings(adaptive=False))
    cfg = tmp / "reshard.yaml"
    write_config(config, cfg)
    appliers = [subprocess.Popen([sys.executable, "-m", "reshard.cli", "--config", str(cfg), "--progress", "off",
                                  "apply", NAME, "--metrics-port", "0"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        co.wait(NAME, timeout=300)
        time.sleep(2.0 + 3.0 * (workers - 1))  # the consumer group settles on every worker's share
        st = {p.name: p.pid for p in Stack(HOME[0]).status() if p.pid}
        extra = {"Kafka broker": st["kafka"], "Kafka Connect (Debezium)": st["connect"]}
        extra.update({f"reshard apply #{i + 1}": a.pid for i, a in enumerate(appliers)})
        i0 = sum(tree_cpu(a.pid) for a in appliers)
        time.sleep(IDLE_S)  # caught up, nothing written: what a worker costs by the second, doing nothing
        idle_ms_per_s = (sum(tree_cpu(a.pid) for a in appliers) - i0) * 1000 / IDLE_S / workers
        t0 = parts(config, extra)
        started = time.monotonic()
        burst(config, rows, events)
        co.wait(NAME, timeout=600)
        seconds = time.monotonic() - started
        t1 = parts(config, extra)
    finally:
        for a in appliers:
            a.terminate()
        for a in appliers:
            a.wait(timeout=60)
        co.teardown(NAME)
    per = {k: (t1[k] - t0[k]) * 1e6 / events for k in t0}
    per["reshard apply"] = sum(per.pop(f"reshard apply #{i + 1}") for i in range(workers))
    # of which the workers' by-the-second cost over the burst: it grows with their number, not the events
    per[IDLE_SHARE] = idle_ms_per_s * workers * seconds * 1000 / events
    per[IDLE_RATE] = idle_ms_per_s
    per[DRAIN_RATE] = events / seconds
    return per


def native_round(base: Config, rows: int, events: int) -> dict[str, float]:
    config = fresh_databases(base, DB, NAME)
    seed_narrow(config, rows, TARGETS)
    before, after = demo_maps(TARGETS)
    p = plan(parse_map(before, config.clusters), parse_map(after, config.clusters))
    src = config.cluster("source1")
    with psycopg.connect(src.dsn, autocommit=True) as conn:
        for m in p.moves:
            pred = p.predicate_sql(m, "public.accounts").as_string(conn)
            conn.execute(f"CREATE PUBLICATION bench_{m.target} FOR TABLE public.accounts WHERE ({pred})")
    for m in p.moves:
        with psycopg.connect(config.cluster(m.target).dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SUBSCRIPTION bench_{m.target} CONNECTION '{src.dsn}' PUBLICATION bench_{m.target}")

    def sums() -> tuple[int, int]:
        with psycopg.connect(src.dsn) as conn:
            want = conn.execute("SELECT sum(a) FROM public.accounts").fetchone()[0]
        got = 0
        for t in TARGETS:
            with psycopg.connect(config.cluster(t).dsn) as conn:
                got += conn.execute("SELECT coalesce(sum(a), 0) FROM public.accounts").fetchone()[0]
        return int(want), int(got)

    def synced() -> bool:
        want, got = sums()
        return want == got
    try:
        deadline = time.monotonic() + 300
        while not synced():
            if time.monotonic() > deadline:
                raise SystemExit("native replication did not copy the table within 300 s")
            time.sleep(0.2)
        time.sleep(2.0)
        t0 = parts(config, {})
        started = time.monotonic()
        burst(config, rows, events)
        while not synced():
            time.sleep(0.05)
        seconds = time.monotonic() - started
        t1 = parts(config, {})
    finally:
        for t in TARGETS:
            with psycopg.connect(config.cluster(t).dsn, autocommit=True) as conn:
                conn.execute(f"DROP SUBSCRIPTION IF EXISTS bench_{t}")
    return {**{k: (t1[k] - t0[k]) * 1e6 / events for k in t0}, DRAIN_RATE: events / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", default="1", help="applier worker counts to run reshard with, e.g. 1,2")
    ap.add_argument("--no-native", action="store_true", help="measure reshard only")
    ap.add_argument("--async-commit", action="store_true", help=ASYNC_COMMIT_HELP)
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    if args.async_commit:
        ASYNC_COMMIT.append(True)
    base = stack_config(args.pg_version)
    HOME.append(state_dir() / f"pg{args.pg_version}" if args.pg_version else state_dir())
    kinds = [f"reshard x{n}" if len(counts) > 1 else "reshard" for n in counts]
    if not args.no_native:
        kinds.append("native")
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                got = (native_round(base, args.rows, args.events) if kind == "native" else
                       reshard_round(base, args.rows, args.events, Path(tmp), counts[kinds.index(kind)]))
                runs[kind].append(got)
                print(f"round {r + 1} {kind}: " + ", ".join(f"{k} {v:,.1f}" for k, v in got.items())
                      + f" µs/event; load {load_average()}", file=sys.stderr)
    table = {kind: {k: median([run[k] for run in rs]) for k in rs[0]} for kind, rs in runs.items()}
    totals = {kind: sum(v for k, v in row.items() if k not in NOT_PARTS) for kind, row in table.items()}
    ratios = {k: totals[k] / totals["native"] for k in totals if k != "native"} if "native" in totals else {}
    scale = {k: table[k]["reshard apply"] / table[kinds[0]]["reshard apply"] for k in kinds[1:] if k != "native"}
    drain = {k: table[k][DRAIN_RATE] / table["native"][DRAIN_RATE] for k in kinds if k != "native"} \
        if "native" in table else {}
    if args.json:
        print(json.dumps({"events": args.events, "rounds": args.rounds, "per_event_cpu_us": table,
                          "total_cpu_us": totals, "ratio_to_native": ratios, "drain_vs_native": drain,
                          "applier_cpu_vs_one_worker": scale, "load": load_average()}, indent=2))
        return
    print(f"CPU-µs per event, {args.events:,} single-row updates split 1 -> 2, medians of {args.rounds} rounds")
    for kind, row in table.items():
        print(f"  {kind}")
        for k, v in row.items():
            print(f"    {k:<28} {v:>9,.1f}")
        print(f"    {'total':<28} {totals[kind]:>9,.1f}")
    for k, v in ratios.items():
        print(f"  {k} / native: {v:.2f}x the CPU per event")
    for k, v in drain.items():
        print(f"  {k} / native: {v:.2f}x the end-to-end drain rate (burst's first write -> every target has it)")
    for k, v in scale.items():
        print(f"  applier CPU per event, {k} / {kinds[0]}: {v:.2f}")
    print(f"  load now {load_average()}")


if __name__ == "__main__":
    main()
