"""What the continuous consistency checker costs the application on the source: p99
latency of a pgbench load at a fixed rate, with and without `verify --continuous` at its
default throttle, in alternating rounds of the same length.

Setup on the embedded stack: N accounts on source1 split 1 -> 2 and copied, an applier
streaming, and pgbench's TPC-B-like tables beside the accounts as the application. Each
phase runs pgbench at a fixed rate (`-R`) for --seconds; the checker phase runs the
checker for the same time beside it. Latency is each transaction's own time.

    .venv/bin/python bench/check_impact.py [--rows 300000] [--rate 200] [--seconds 20] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import load_average, median  # noqa: E402
from bench.copy_impact import PgbenchLoad, percentile  # noqa: E402
from bench.copy_throughput import CLUSTERS, setup  # noqa: E402

DB = "bench_check"
NAME = "benchcheck"
WARMUP_S = 4.0


def cli(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "reshard.cli", "--config", str(cfg), "--progress", "off", *args]


def phase(config, cfg: Path, kind: str, rate: float, seconds: float, checker_args: list[str]) -> dict:
    """pgbench for ``seconds``; in the checker phase, while the checker runs. The checker is
    started WARMUP_S before pgbench, so its process start (the interpreter, imports, the
    control schema check) is not charged to it: it is the steady cost that is measured."""
    logs = Path(tempfile.mkdtemp(prefix=f"reshard-check-impact-{kind}-"))
    checker = None
    if kind == "checker":
        checker = subprocess.Popen(cli(cfg, "verify", NAME, "--continuous", *checker_args, "--json"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        time.sleep(WARMUP_S)
    load = PgbenchLoad(config.cluster("source1").dsn, rate, logs)
    load.start()
    time.sleep(seconds)
    lat = load.stop()
    out: dict = {}
    if checker is not None:
        checker.send_signal(signal.SIGTERM)  # it stops after its chunk and reports
        stdout, stderr = checker.communicate(timeout=120)
        ran = time.monotonic() - started
        if checker.returncode != 0:
            raise SystemExit(f"verify --continuous failed ({checker.returncode}):\n{stderr[-2000:]}")
        rows = sum(p["rows"] for p in json.loads(stdout)["passes"])
        out.update(rows_checked=rows, rows_per_s=round(rows / ran))
    out.update(transactions=len(lat), p50_ms=percentile(lat, 50), p99_ms=percentile(lat, 99))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--rate", type=float, default=200.0, help="pgbench transactions/s on the source")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk-rows", type=int, default=None, help="the checker's --chunk-rows (default: its own)")
    ap.add_argument("--max-rows-per-second", type=float, default=None,
                    help="the checker's --max-rows-per-second (default: its own)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    checker_args = ([f"--chunk-rows={args.chunk_rows}"] if args.chunk_rows else []) + \
        ([f"--max-rows-per-second={args.max_rows_per_second}"] if args.max_rows_per_second else [])

    config, cfg, maps, _co, _before, _after = setup(DB, NAME, args.rows, CLUSTERS)
    subprocess.run(["pgbench", "-i", "-q", "-s", "4", config.cluster("source1").dsn], check=True, capture_output=True)
    subprocess.run(cli(cfg, "start", NAME, "--to", str(maps)), check=True, capture_output=True)
    applier = subprocess.Popen(cli(cfg, "apply", NAME, "--metrics-port", "0"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        subprocess.run(cli(cfg, "wait", NAME), check=True, capture_output=True)
        rounds = []
        for r in range(args.rounds):
            kinds = ["baseline", "checker"] if r % 2 == 0 else ["checker", "baseline"]
            row: dict = {"round": r + 1}
            for kind in kinds:
                row[kind] = phase(config, cfg, kind, args.rate, args.seconds, checker_args)
            row["load"] = load_average()
            rounds.append(row)
            print(f"round {r + 1}: baseline p99 {row['baseline']['p99_ms']} ms; checker p99 "
                  f"{row['checker']['p99_ms']} ms at {row['checker']['rows_per_s']:,} rows/s; load {row['load']}",
                  file=sys.stderr, flush=True)
    finally:
        applier.send_signal(signal.SIGTERM)
        applier.wait(timeout=60)

    doc = {"benchmark": "check_impact", "version": 1, "rows": args.rows, "pgbench_rate": args.rate,
           "checker_args": checker_args,
           "seconds": args.seconds, "rounds": args.rounds, "cpus": os.cpu_count(), "all": rounds}
    for kind in ("baseline", "checker"):
        doc[kind] = {k: median([x[kind][k] for x in rounds]) for k in ("p50_ms", "p99_ms")}
    doc["checker"]["rows_per_s"] = median([x["checker"]["rows_per_s"] for x in rounds])
    doc["checker"]["p99_vs_baseline"] = round(doc["checker"]["p99_ms"] / doc["baseline"]["p99_ms"], 2)
    doc["p99_ratio_per_round"] = [round(x["checker"]["p99_ms"] / x["baseline"]["p99_ms"], 2) for x in rounds]
    # each round's two phases ran back to back: their ratio is less exposed to the machine's drift
    doc["p99_ratio_paired_median"] = median(doc["p99_ratio_per_round"])
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"source pgbench at {args.rate:g} tx/s, {args.seconds:g} s phases, medians of {args.rounds} alternating "
          f"rounds ({os.cpu_count()} CPUs), {args.rows:,} moving rows, checker {' '.join(checker_args) or 'defaults'}")
    b, c = doc["baseline"], doc["checker"]
    print(f"  no checker                 p50 {b['p50_ms']:>7.2f} ms  p99 {b['p99_ms']:>7.2f} ms")
    print(f"  verify --continuous        p50 {c['p50_ms']:>7.2f} ms  p99 {c['p99_ms']:>7.2f} ms  "
          f"{c['rows_per_s']:,.0f} rows/s  p99 x{c['p99_vs_baseline']}")
    print(f"  p99 ratio per round {doc['p99_ratio_per_round']}: median x{doc['p99_ratio_paired_median']}")


if __name__ == "__main__":
    main()
