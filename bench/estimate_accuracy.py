"""`reshard check`'s feasibility estimate against the run it predicts: copy time, WAL written
while the copy runs, and the catch-up after it, predicted and then measured, in rounds.

Setup on the embedded stack: N accounts on source1, split 1 -> 2 by hash (every row moves).
Each round, with the demo's write load running on source1 at ``--write-rate`` writes/s:

1. `reshard check --to MAP --json`: the predicted copy seconds (under the default throttle's
   ramp, or unthrottled for ``--throttle off``), the WAL written meanwhile and the catch-up
   seconds (with the apply rate it used: measured on this deployment once an applier has run
   here, else the documented one, said so);
2. `reshard start NAME --to MAP` (``--throttle``, default adaptive, what a user gets): the
   measured copy seconds, and the WAL the source wrote from the copy's start to its end;
3. an applier worker started after the copy: the catch-up, timed until `reshard wait`'s
   proof passes (every change committed so far applied) while the load keeps writing.

The estimate reads a sample of the moving rows with one session for the read rate, and models
the default throttle as its ramp on a healthy source (start 1 MiB/s, +10 % every 0.5 s); a
source the throttle finds busy holds the copy lower. Printed: each round's pairs and the
medians' ratios, with the load average.

    .venv/bin/python bench/estimate_accuracy.py [--rows 300000] [--rounds 3] [--write-rate 300]
        [--throttle adaptive|off] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_pg_version, load_average, median  # noqa: E402
from bench.copy_throughput import CLUSTERS, empty_targets, setup  # noqa: E402
from reshard.stack.workload import Workload  # noqa: E402

DB = "bench_estimate"
NAME = "benchest"


def cli(cfg: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "reshard.cli", "--config", str(cfg), "--progress", "off", *args,
                          "--json"], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"reshard {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def lsn(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])


def wal_between(dsn: str, a: str, b: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (b, a)).fetchone()[0])


def one_round(config, cfg: Path, maps: Path, co, name: str, write_rate: float, throttle: str) -> dict:
    src = config.cluster("source1").dsn
    load = Workload(src, rate=write_rate, max_seconds=1800, seed=7)
    load.start()
    try:
        time.sleep(3.0)  # the load's rate settles before the sources are measured
        check = cli(cfg, "check", "--to", str(maps))
        feas = check["feasibility"]
        src1 = feas["sources"]["source1"]
        copy_s = src1["copy_seconds"] if throttle == "adaptive" else src1["copy_seconds_unthrottled"]
        predicted = {"copy_s": copy_s, "catch_up_s": feas["catch_up_seconds"],
                     "wal_bytes": round(src1["wal_bytes_per_s"] * copy_s),
                     "apply_rate": f"{feas['apply_events_per_s']} ev/s, {feas['apply_rate']}"}
        before = lsn(src)
        started = cli(cfg, "start", name, "--to", str(maps), "--throttle", throttle)
        after = lsn(src)
        stop = threading.Event()
        applier = threading.Thread(target=co.apply, args=(name, stop), daemon=True)
        t0 = time.monotonic()
        applier.start()
        co.wait(name, timeout=1800)
        catch_up = time.monotonic() - t0
        stop.set()
        applier.join(timeout=60)
    finally:
        load.stop()
    measured = {"copy_s": round(started["copy_seconds"], 1), "catch_up_s": round(catch_up, 1),
                "wal_bytes": wal_between(src, before, after)}
    return {"predicted": predicted, "measured": measured, "load": load_average()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write-rate", type=float, default=300.0, help="the load on source1 during each round")
    ap.add_argument("--throttle", choices=["adaptive", "off"], default="adaptive")
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()

    config, cfg, maps, co, _before, _after = setup(DB, NAME, args.rows, CLUSTERS, args.pg_version)
    rounds = []
    for r in range(args.rounds):
        empty_targets(config, CLUSTERS)
        name = f"{NAME}{r + 1}"
        res = one_round(config, cfg, maps, co, name, args.write_rate, args.throttle)
        co.teardown(name)
        rounds.append(res)
        p, m = res["predicted"], res["measured"]
        print(f"round {r + 1}: copy {p['copy_s']} s predicted / {m['copy_s']} s measured; WAL "
              f"{(p['wal_bytes'] or 0) / 1e6:.1f} / {m['wal_bytes'] / 1e6:.1f} MB; catch-up {p['catch_up_s']} / "
              f"{m['catch_up_s']} s (apply rate {p['apply_rate']}); load {res['load']}", file=sys.stderr)

    def ratio(key: str) -> float:
        meas = median([r["measured"][key] for r in rounds])
        pred = median([r["predicted"][key] or 0 for r in rounds])
        return round(meas / pred, 2) if pred else float("nan")

    summary = {"rows": args.rows, "write_rate": args.write_rate, "throttle": args.throttle, "rounds": rounds,
               "measured_over_predicted": {k: ratio(k) for k in ("copy_s", "wal_bytes", "catch_up_s")},
               "load": load_average()}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{args.rows:,} rows split 1->2, load writing {args.write_rate:g}/s, copy throttle {args.throttle}, "
          f"{args.rounds} rounds (load average {summary['load']})")
    print("| figure | predicted (median) | measured (median) | measured / predicted |")
    print("| --- | --- | --- | --- |")
    for key, label, scale, unit in (("copy_s", "copy", 1, "s"), ("wal_bytes", "WAL written during the copy", 1e6,
                                                                    "MB"), ("catch_up_s", "catch-up", 1, "s")):
        pred = median([(r["predicted"][key] or 0) / scale for r in rounds])
        meas = median([r["measured"][key] / scale for r in rounds])
        print(f"| {label} | {pred:,.1f} {unit} | {meas:,.1f} {unit} | {summary['measured_over_predicted'][key]} |")


if __name__ == "__main__":
    main()
