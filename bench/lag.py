"""End-to-end lag at a sustained write rate: source commit -> row visible on its target.

Setup on the embedded stack: accounts seeded on source1 and split to target1/target2,
one `reshard apply` process running. pgbench writes single-row updates at a fixed rate
(`-R`) for the duration; meanwhile a probe updates one moving row every 20 ms with its
own commit time (clock_timestamp() in the row), and a poller on the row's target reads
it every 5 ms: each new value seen gives one lag sample (target time seen - source
commit time; both servers share this machine's clock). Printed: p50, p99 and max per
rate, and a PNG of lag over time (needs matplotlib: `pip install -e '.[bench]'`).

    .venv/bin/python bench/lag.py [--rates 1000,3000] [--seconds 40] [--png lag.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_pg_version, created_split, load_average  # noqa: E402
from reshard.config import write_config  # noqa: E402

DB = "bench_lag"
NAME = "benchlag"
TARGETS = ["target1", "target2"]
PROBE_KEY = 1  # a moving key: its updates travel source1 -> Debezium -> Kafka -> applier -> its target


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _reporting(fn):
    """A thread body that prints what killed it (a silent probe would leave no samples)."""
    def run() -> None:
        try:
            fn()
        except Exception as exc:
            print(f"{fn.__name__} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return run


def run_rate(config, rate: int, seconds: float, rows: int, tmp: Path, owner: str) -> list[tuple[float, float]]:
    """(seconds since start, lag ms) samples at one pgbench rate."""
    script = tmp / "update.sql"
    script.write_text(f"\\set id random(2, {rows})\nUPDATE public.accounts SET balance = balance + 1 WHERE id = :id;\n")
    src, tgt = config.cluster("source1").dsn, config.cluster(owner).dsn
    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    started = time.time()

    def probe() -> None:
        with psycopg.connect(src, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("UPDATE public.accounts SET note = extract(epoch FROM clock_timestamp())::text "
                             "WHERE id = %s", (PROBE_KEY,))
                time.sleep(0.02)

    def poll() -> None:
        last = None
        with psycopg.connect(tgt, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute("SELECT note, extract(epoch FROM clock_timestamp()) FROM public.accounts "
                                   "WHERE id = %s", (PROBE_KEY,)).fetchone()
                if row and row[0] and row[0] != last and row[0][0].isdigit():  # not the seeded note
                    last = row[0]
                    samples.append((float(row[1]) - started, (float(row[1]) - float(row[0])) * 1000))
                time.sleep(0.005)

    threads = [threading.Thread(target=_reporting(f), daemon=True) for f in (probe, poll)]
    for t in threads:
        t.start()
    bench = subprocess.run(["pgbench", "-n", "-f", str(script), "-c", "4", "-j", "2", "-R", str(rate),
                            "-T", str(int(seconds)), src], capture_output=True, text=True)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    if bench.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{bench.stderr}")
    skip = 3.0  # the first seconds: the probe's first value may predate the run
    return [(t, ms) for t, ms in samples if t > skip]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1000,3000", help="pgbench single-row updates per second, comma-separated")
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--png", help="write a plot of lag over time here")
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()

    config, co, new_map = created_split(args.pg_version, DB, NAME, args.rows, TARGETS)
    co.start(NAME)
    owner = new_map.owner("public.accounts", [PROBE_KEY])
    tmp = Path(tempfile.mkdtemp(prefix="reshard-bench-"))
    cfg = tmp / "reshard.yaml"
    write_config(config, cfg)
    applier = subprocess.Popen([sys.executable, "-m", "reshard.cli", "--config", str(cfg), "--progress", "off",
                                "apply", NAME], stdout=subprocess.DEVNULL, stderr=open(tmp / "apply.log", "wb"))
    results = {}
    try:
        co.wait(NAME, timeout=120)
        for rate in (int(r) for r in args.rates.split(",")):
            samples = run_rate(config, rate, args.seconds, args.rows, tmp, owner)
            lags = [ms for _t, ms in samples]
            if not lags:
                raise SystemExit(f"no lag sample at {rate} writes/s: the probe row never changed on {owner}")
            results[rate] = {"samples": len(lags), "p50_ms": round(percentile(lags, 0.5), 1),
                             "p99_ms": round(percentile(lags, 0.99), 1), "max_ms": round(max(lags), 1),
                             "load": load_average(), "series": samples}
            print(f"{rate:,} writes/s for {args.seconds:.0f}s: lag p50 {results[rate]['p50_ms']:.0f} ms, "
                  f"p99 {results[rate]['p99_ms']:.0f} ms, max {results[rate]['max_ms']:.0f} ms "
                  f"({len(lags)} samples); load {results[rate]['load']}", file=sys.stderr, flush=True)
            co.wait(NAME, timeout=300)
    finally:
        applier.send_signal(signal.SIGTERM)
        applier.wait(timeout=60)
        co.teardown(NAME)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        for rate, r in results.items():
            ax.plot([t for t, _ in r["series"]], [ms for _, ms in r["series"]], lw=0.8,
                    label=f"{rate:,} writes/s (p99 {r['p99_ms']:.0f} ms)")
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel("source commit -> visible on target (ms)")
        ax.set_title(f"reshard end-to-end lag, one applier, {os.cpu_count()} CPUs")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
    doc = {"benchmark": "lag", "version": 1, "seconds": args.seconds, "cpus": os.cpu_count(),
           "rates": {str(k): {kk: vv for kk, vv in v.items() if kk != "series"} for k, v in results.items()}}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"end-to-end lag (source commit -> visible on target), one applier, {os.cpu_count()} CPUs")
    for rate, r in doc["rates"].items():
        print(f"  {int(rate):>6,} writes/s   p50 {r['p50_ms']:>6.0f} ms   p99 {r['p99_ms']:>6.0f} ms   "
              f"max {r['max_ms']:>6.0f} ms")


if __name__ == "__main__":
    main()
