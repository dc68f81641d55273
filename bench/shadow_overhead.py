"""What shadow reads cost the application: the router's read latency (p50, p99) at a fixed
read rate, with shadow reads off and at a sample (1 % by default), measured side by side.

Setup on the embedded stack: N accounts on source1 split 1 -> 2 and copied, an applier
streaming, the migration shadowing at the sample. Two routers in this process: one made
with ``Router.from_config`` (it shadows), one with the same map and no config (it cannot).
Reader threads read random moving keys (one row by primary key, in a transaction on the
owner), each read through one router or the other at random, so both see the same
machine at the same moments: on these noisy shared machines, phases taken one after
the other differed by more than the effect measured. Each read's own time is measured;
a round is --seconds of reads, and the figures are medians over the rounds.

    .venv/bin/python bench/shadow_overhead.py [--rows 100000] [--rate 400] [--seconds 20] [--rounds 5] [--sample 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import load_average, median  # noqa: E402
from bench.check_impact import cli  # noqa: E402
from bench.copy_impact import percentile  # noqa: E402
from bench.copy_throughput import CLUSTERS, setup  # noqa: E402
from reshard.router import POLL_EVERY_S, Router  # noqa: E402
from reshard.stack.workload import TABLE  # noqa: E402

DB = "bench_shadow"
NAME = "benchshadow"
THREADS = 2


def read_phase(routers: dict[str, Router], rows: int, rate: float, seconds: float) -> dict[str, list[float]]:
    """Reads at ``rate`` a second for ``seconds``, each through a router picked at random;
    returns each router's reads' milliseconds."""
    lat: dict[str, list[float]] = {k: [] for k in routers}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def reader(i: int) -> None:
        rng = random.Random(i)
        interval = THREADS / rate
        next_at = time.monotonic()
        mine: dict[str, list[float]] = {k: [] for k in routers}
        names = sorted(routers)
        while time.monotonic() < stop:
            k = rng.randrange(1, rows + 1)
            which = rng.choice(names)
            t = time.perf_counter()
            routers[which].read(TABLE, [k], lambda conn, k=k: conn.execute(
                f"SELECT * FROM {TABLE} WHERE id = %s", (k,)).fetchall())
            mine[which].append((time.perf_counter() - t) * 1000)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        with lock:
            for name, values in mine.items():
                lat[name].extend(values)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=400.0, help="router reads/s (all threads)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sample", type=float, default=0.01, help="the shadow phase's sample")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    config, cfg, maps, co, _before, _after = setup(DB, NAME, args.rows, CLUSTERS)
    subprocess.run(cli(cfg, "start", NAME, "--to", str(maps)), check=True, capture_output=True)
    applier = subprocess.Popen(cli(cfg, "apply", NAME, "--metrics-port", "0"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    routers: dict[str, Router] = {}
    try:
        subprocess.run(cli(cfg, "wait", NAME), check=True, capture_output=True)
        co.shadow(NAME, args.sample, {})
        routers["shadow"] = Router.from_config(config)
        routers["baseline"] = Router(config.control_dsn, {n: c.dsn for n, c in config.clusters.items()})
        time.sleep(POLL_EVERY_S + 1.0)  # the shadowing router picks the sample up
        read_phase(routers, args.rows, args.rate, 3.0)  # connections opened, caches warm
        shadowing = routers["shadow"].shadow
        assert shadowing is not None
        rounds = []
        for r in range(args.rounds):
            before = routers["shadow"].stats()["shadow"].get(TABLE, {}).get("sampled", 0)
            lat = read_phase(routers, args.rows, args.rate, args.seconds)
            shadowing.drain(60)
            row: dict = {"round": r + 1}
            for kind in ("baseline", "shadow"):
                row[kind] = {"reads": len(lat[kind]), "p50_ms": percentile(lat[kind], 50),
                             "p99_ms": percentile(lat[kind], 99)}
            row["shadow"]["shadowed"] = routers["shadow"].stats()["shadow"].get(TABLE, {}).get("sampled", 0) - before
            row["load"] = load_average()
            rounds.append(row)
            print(f"round {r + 1}: baseline p99 {row['baseline']['p99_ms']} ms; shadow p99 {row['shadow']['p99_ms']} "
                  f"ms ({row['shadow']['shadowed']} reads shadowed); load {row['load']}", file=sys.stderr, flush=True)
        totals = routers["shadow"].stats()["shadow"].get(TABLE, {})
    finally:
        for router in routers.values():
            router.close()
        applier.send_signal(signal.SIGTERM)
        applier.wait(timeout=60)

    doc = {"benchmark": "shadow_overhead", "version": 1, "rows": args.rows, "read_rate": args.rate,
           "sample": args.sample, "seconds": args.seconds, "rounds": args.rounds, "cpus": os.cpu_count(),
           "all": rounds, "shadow_outcomes": totals}
    for kind in ("baseline", "shadow"):
        doc[kind] = {k: median([x[kind][k] for x in rounds]) for k in ("p50_ms", "p99_ms")}
    doc["shadow"]["p99_vs_baseline"] = round(doc["shadow"]["p99_ms"] / doc["baseline"]["p99_ms"], 3)
    doc["p99_ratio_per_round"] = [round(x["shadow"]["p99_ms"] / x["baseline"]["p99_ms"], 3) for x in rounds]
    # the rounds are paired (both routers read in the same seconds): their ratios' median
    doc["shadow"]["p99_paired_ratio"] = round(statistics.median(doc["p99_ratio_per_round"]), 3)
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"router reads at {args.rate:g}/s, half through each router, {args.seconds:g} s rounds, medians of "
          f"{args.rounds} rounds ({os.cpu_count()} CPUs), sample {args.sample:g}")
    b, s = doc["baseline"], doc["shadow"]
    print(f"  shadow reads off           p50 {b['p50_ms']:>7.2f} ms  p99 {b['p99_ms']:>7.2f} ms")
    print(f"  shadow reads at {args.sample:<10g} p50 {s['p50_ms']:>7.2f} ms  p99 {s['p99_ms']:>7.2f} ms  "
          f"p99 x{s['p99_vs_baseline']}; paired, the rounds' median x{s['p99_paired_ratio']} "
          f"(per round: {doc['p99_ratio_per_round']})")
    print(f"  shadow outcomes: {totals}")


if __name__ == "__main__":
    main()
