"""What the snapshot copy costs the application on the source: p99 latency of a
pgbench load at a fixed rate, without a copy, during a copy under the default
(adaptive) throttle, and during an unthrottled copy, in alternating rounds. The
adaptive copy's impact (p95 and p99 over the no-copy phase, in ms) is printed beside
the latency budget it was given (``--max-latency-impact``, reshard's default 5 ms).

Setup on the embedded stack: N accounts on source1 split 1 -> 2 (every row moves), and
pgbench's TPC-B-like tables beside them as the application. In each phase pgbench runs
at a fixed rate (`-R`) in 3-second slices with per-transaction logs, until the phase
ends (15 s for the baseline, the copy's end otherwise). Latency is each transaction's
own time on the server and the wire, not pgbench's scheduling lag.

    .venv/bin/python bench/copy_impact.py [--rows 300000] [--rate 200] [--rounds 3]
        [--max-latency-impact 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import load_average, median  # noqa: E402
from bench.copy_throughput import CLUSTERS, empty_targets, setup  # noqa: E402

DB = "bench_impact"
NAME = "benchimpact"
BASELINE_S = 15.0


class PgbenchLoad(threading.Thread):
    """pgbench at a fixed rate in short slices until stopped; collects per-transaction latency (ms)."""

    def __init__(self, dsn: str, rate: float, logdir: Path):
        super().__init__(daemon=True)
        self.dsn, self.rate, self.logdir = dsn, rate, logdir
        self.halt = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            prefix = self.logdir / f"slice{n}"
            n += 1
            subprocess.run(["pgbench", "-n", "-c", "4", "-j", "2", "-R", str(self.rate), "-T", "3", "-l",
                            f"--log-prefix={prefix}", self.dsn], check=True, capture_output=True, cwd=self.logdir)
            for f in self.logdir.glob(f"{prefix.name}.*"):
                for line in f.read_text().splitlines():
                    self.latencies.append(int(line.split()[2]) / 1000.0)  # column 3: the transaction's µs
                f.unlink()

    def stop(self) -> list[float]:
        self.halt.set()
        self.join()
        return self.latencies


def percentile(values: list[float], p: float) -> float:
    return round(statistics.quantiles(values, n=1000)[int(p * 10) - 1], 2) if len(values) > 10 else float("nan")


def phase(config, cfg: Path, maps: Path, kind: str, name: str, rate: float, rows: int, budget_ms: int) -> dict:
    src = config.cluster("source1").dsn
    logs = Path(tempfile.mkdtemp(prefix=f"reshard-impact-{kind}-"))
    load = PgbenchLoad(src, rate, logs)
    load.start()
    out: dict = {}
    if kind == "baseline":
        time.sleep(BASELINE_S)
    else:
        args = ["start", name, "--to", str(maps), "--json"] + (
            ["--throttle", "off"] if kind == "unthrottled" else ["--max-latency-impact", f"{budget_ms}ms"])
        proc = subprocess.run([sys.executable, "-m", "reshard.cli", "--config", str(cfg), "--progress", "off", *args],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"reshard start failed:\n{proc.stderr}")
        doc = json.loads(proc.stdout)
        if doc["rows_copied"] != rows:
            raise SystemExit(f"copied {doc['rows_copied']} rows, expected {rows}")
        out.update(copy_rows_per_s=doc["rows_per_second"], copy_s=doc["seconds"],
                   held_back_s=doc["throttle"]["source1"]["waited_s"])
    lat = load.stop()
    out.update(transactions=len(lat), p50_ms=percentile(lat, 50), p95_ms=percentile(lat, 95),
               p99_ms=percentile(lat, 99))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--rate", type=float, default=200.0, help="pgbench transactions/s on the source")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-latency-impact", type=int, default=5, metavar="MS",
                    help="the adaptive copy's latency budget, ms (reshard's default: 5)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    config, cfg, maps, co, _before, _after = setup(DB, NAME, args.rows, CLUSTERS)
    subprocess.run(["pgbench", "-i", "-q", "-s", "4", config.cluster("source1").dsn], check=True, capture_output=True)
    rounds = []
    for r in range(args.rounds):
        kinds = ["baseline", "adaptive", "unthrottled"] if r % 2 == 0 else ["baseline", "unthrottled", "adaptive"]
        row: dict = {"round": r + 1}
        for kind in kinds:
            name = f"{NAME}{r + 1}{kind[0]}"
            empty_targets(config, CLUSTERS)
            row[kind] = phase(config, cfg, maps, kind, name, args.rate, args.rows, args.max_latency_impact)
            if kind != "baseline":
                co.teardown(name)
        row["load"] = load_average()
        rounds.append(row)
        print(f"round {r + 1}: " + "; ".join(
            f"{k} p99 {row[k]['p99_ms']} ms" + (f", copy {row[k]['copy_rows_per_s']:,} rows/s" if k != "baseline"
                                                 else "") for k in kinds) + f"; load {row['load']}",
              file=sys.stderr, flush=True)

    def med(kind: str, key: str) -> float:
        return median([x[kind][key] for x in rounds])

    doc = {"benchmark": "copy_impact", "version": 2, "rows": args.rows, "pgbench_rate": args.rate,
           "rounds": args.rounds, "latency_budget_ms": args.max_latency_impact, "cpus": os.cpu_count(),
           "all": rounds}
    for kind in ("baseline", "adaptive", "unthrottled"):
        doc[kind] = {"p50_ms": med(kind, "p50_ms"), "p95_ms": med(kind, "p95_ms"), "p99_ms": med(kind, "p99_ms")}
        if kind != "baseline":
            doc[kind]["copy_rows_per_s"] = med(kind, "copy_rows_per_s")
            doc[kind]["p99_vs_baseline"] = round(doc[kind]["p99_ms"] / doc["baseline"]["p99_ms"], 2)
            for q in ("p95", "p99"):  # each round's impact against its own no-copy phase, then the median
                doc[kind][f"{q}_impact_ms"] = round(median([x[kind][f"{q}_ms"] - x["baseline"][f"{q}_ms"]
                                                            for x in rounds]), 2)
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"source pgbench at {args.rate:g} tx/s while {args.rows:,} rows are copied 1 -> 2, medians of "
          f"{args.rounds} alternating rounds ({os.cpu_count()} CPUs)")
    for kind, label in (("baseline", "no copy"), ("adaptive", "copy, default throttle"),
                        ("unthrottled", "copy, --throttle off")):
        d = doc[kind]
        extra = (f"  copy {d['copy_rows_per_s']:>9,.0f} rows/s  impact p95 {d['p95_impact_ms']:+.2f} ms, "
                 f"p99 {d['p99_impact_ms']:+.2f} ms (x{d['p99_vs_baseline']})" if kind != "baseline" else "")
        print(f"  {label:<24} p50 {d['p50_ms']:>7.2f} ms  p95 {d['p95_ms']:>7.2f} ms  p99 {d['p99_ms']:>7.2f} ms{extra}")
    print(f"  the default copy's latency budget: {args.max_latency_impact} ms")


if __name__ == "__main__":
    main()
