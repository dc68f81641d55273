"""How fast Debezium captures single-row transactions, with reshard's connector settings and
with variants of them: the tool for issue 26's item 2 (keep what helps, reject what does not
with the figure).

Setup on the embedded stack: the demo's accounts table (--rows rows) on source1, split to
target1/target2, the copy done, Debezium streaming; no applier runs (capture is measured on
its own). Each round, for the baseline (the connector as reshard registers it) and then each
variant in turn (the order rotates every round): the connector's config is set (a variant adds
or replaces properties; Connect restarts the task), Debezium is paused while pgbench writes
--updates single-row updates (4 clients), then timed from its resume until the slot confirms
a heartbeat committed after the burst. Measured: events/s captured, against pgbench's own write
rate, and Kafka Connect's and the broker's CPU-µs per event (utime + stime of each process over the
capture), and what each costs by the second while the connector runs with nothing to capture
(5 s before each burst).

    .venv/bin/python bench/capture_settings.py [--rounds 3] [--updates 60000]
        [--variant NAME:key=value,key=value]... [--json]

A variant's properties are connector properties, e.g. ``max.batch.size=2048`` or
``producer.override.linger.ms=20``; ``-key`` removes one (``-transforms`` drops the echo filter).
Printed per setting: median capture rate, the ratio to the baseline measured in the same run,
the ratio to pgbench's rate, Connect's and the broker's CPU per event; and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    ASYNC_COMMIT_HELP,
    add_pg_version,
    created_split,
    load_average,
    median,
    own_cpu,
    pgbench_env,
)
from reshard.config import state_dir  # noqa: E402
from reshard.kafka.connect_client import ConnectClient  # noqa: E402
from reshard.proof.catchup import mark_positions, wait_confirmed  # noqa: E402
from reshard.snapshotter.throttle import ThrottleSettings  # noqa: E402
from reshard.stack import Stack  # noqa: E402

DB = "bench_capture"
NAME = "benchcapture"
TARGETS = ["target1", "target2"]
IDLE_S = 5.0


def variant(text: str) -> tuple[str, dict[str, str | None]]:
    """``NAME:key=value,-key`` -> (NAME, {key: value, key: None})."""
    name, _, props = text.partition(":")
    if not name or not props:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:key=value[,key=value|-key]...")
    out: dict[str, str | None] = {}
    for p in props.split(","):
        if p.startswith("-"):
            out[p[1:]] = None
        elif "=" in p:
            k, v = p.split("=", 1)
            out[k] = v
        else:
            raise argparse.ArgumentTypeError(f"{p!r}: expected key=value or -key")
    return name, out


def pgbench(dsn: str, rows: int, updates: int, tmp: Path, async_commit: bool) -> subprocess.Popen:
    """pgbench writing ``updates`` single-row updates of random keys (4 clients), started."""
    script = tmp / "update.sql"
    script.write_text(f"\\set id random(1, {rows})\nUPDATE public.accounts SET balance = balance + 1 WHERE id = :id;\n")
    return subprocess.Popen(["pgbench", "-n", "-f", str(script), "-c", "4", "-j", "2", "-t", str(updates // 4), dsn],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=pgbench_env(async_commit))


def tps(proc: subprocess.Popen) -> float:
    out = proc.communicate()[0]
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if proc.returncode or not m:
        raise SystemExit(f"pgbench failed ({proc.returncode}):\n{out}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--updates", type=int, default=60_000, help="single-row updates per burst")
    ap.add_argument("--variant", type=variant, action="append", default=[],
                    help="NAME:key=value,-key (connector properties added, replaced or removed)")
    ap.add_argument("--concurrent", action="store_true",
                    help="Debezium runs while pgbench writes (capture timed from the burst's start), instead of "
                         "catching up a burst written while it was paused")
    ap.add_argument("--async-commit", action="store_true", help=ASYNC_COMMIT_HELP)
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()

    config, co, _new_map = created_split(args.pg_version, DB, NAME, args.rows, TARGETS)
    co.start(NAME, throttle=ThrottleSettings(adaptive=False))
    streams, _topics = co.streams(NAME)
    connect = ConnectClient(config.connect)
    connector = streams[0].connector
    base = {k: v for k, v in (connect.config(connector) or {}).items() if k != "name"}
    settings: list[tuple[str, dict[str, str]]] = [("baseline", base)]
    for name, change in args.variant:
        cfg = {**base, **{k: v for k, v in change.items() if v is not None}}
        settings.append((name, {k: v for k, v in cfg.items() if change.get(k, "") is not None}))
    home = state_dir() / f"pg{args.pg_version}" if args.pg_version else state_dir()
    pids = {p.name: p.pid for p in Stack(home).status()}
    pid, broker = pids["connect"], pids["kafka"]
    src = config.cluster("source1").dsn
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def burst(name: str, cfg: dict[str, str], r: int) -> dict:
                if connect.config(connector) != {**cfg, "name": connector}:
                    connect.put(connector, cfg)
                    time.sleep(2.0)  # the task restarts with the new config
                connect.wait_running(connector)
                time.sleep(1.0)
                i0, ib0 = own_cpu(pid), own_cpu(broker)
                time.sleep(IDLE_S)  # nothing written: what the running connector costs by the second
                idle = {"connect_idle_ms_per_s": round((own_cpu(pid) - i0) * 1000 / IDLE_S, 1),
                        "broker_idle_ms_per_s": round((own_cpu(broker) - ib0) * 1000 / IDLE_S, 1)}
                if not args.concurrent:
                    connect.pause(connector)
                    time.sleep(1.0)
                t0, c0, b0 = time.monotonic(), own_cpu(pid), own_cpu(broker)
                write_tps = tps(pgbench(src, args.rows, args.updates, Path(tmp), args.async_commit))
                positions = mark_positions(config, NAME, streams)
                if not args.concurrent:
                    t0, c0, b0 = time.monotonic(), own_cpu(pid), own_cpu(broker)
                    connect.resume(connector)
                wait_confirmed(config, positions, time.monotonic() + 600, interval=0.005)
                took = time.monotonic() - t0
                return {"setting": name, "round": r, "write_tps": round(write_tps),
                        "capture_events_per_s": round(args.updates / took),
                        "connect_cpu_us_per_event": round((own_cpu(pid) - c0) * 1e6 / args.updates, 1),
                        "broker_cpu_us_per_event": round((own_cpu(broker) - b0) * 1e6 / args.updates, 1),
                        **idle,
                        "load": load_average()}

            warm = burst("baseline", base, 0)  # a fresh worker's JIT: the first burst is far slower
            print(f"warm-up (not counted): captured {warm['capture_events_per_s']:,} events/s", file=sys.stderr)
            for r in range(args.rounds):
                turn = settings[r % len(settings):] + settings[:r % len(settings)]
                for name, cfg in turn:
                    row = burst(name, cfg, r + 1)
                    rows.append(row)
                    print(f"round {r + 1} {name}: pgbench {row['write_tps']:,} tx/s, captured "
                          f"{row['capture_events_per_s']:,} events/s, CPU-µs/event: Connect {row['connect_cpu_us_per_event']}, "
                          f"broker {row['broker_cpu_us_per_event']}; idle ms/s: Connect {row['connect_idle_ms_per_s']}, broker "
                          f"{row['broker_idle_ms_per_s']}; load {row['load']}", file=sys.stderr, flush=True)
    finally:
        connect.put(connector, base)
        co.teardown(NAME)

    def med(name: str, key: str) -> float:
        return median([x[key] for x in rows if x["setting"] == name])

    base_rate = med("baseline", "capture_events_per_s")
    summary = {name: {"capture_events_per_s": med(name, "capture_events_per_s"),
                      "vs_baseline": round(med(name, "capture_events_per_s") / base_rate, 3),
                      "vs_write_rate": round(med(name, "capture_events_per_s") / med(name, "write_tps"), 3),
                      "connect_cpu_us_per_event": med(name, "connect_cpu_us_per_event"),
                      "broker_cpu_us_per_event": med(name, "broker_cpu_us_per_event"),
                      "connect_idle_ms_per_s": med(name, "connect_idle_ms_per_s"),
                      "broker_idle_ms_per_s": med(name, "broker_idle_ms_per_s"),
                      "changes": dict(args.variant).get(name, {})} for name, _ in settings}
    if args.json:
        print(json.dumps({"updates": args.updates, "concurrent": args.concurrent, "async_commit": args.async_commit,
                          "rounds": rows, "settings": summary}, indent=2))
        return
    how = "while pgbench writes" if args.concurrent else "of a burst written while paused"
    print(f"Debezium capture of single-row transactions, {how} ({args.updates:,} per burst, {args.rounds} rounds, "
          f"medians{', pgbench with synchronous_commit=off' if args.async_commit else ''}; {os.cpu_count()} CPUs; "
          f"load now {load_average()})")
    print(f"  {'setting':<22} {'events/s':>10} {'x baseline':>11} {'x pgbench':>10} {'Connect µs/event':>17} "
          f"{'broker µs/event':>16} {'idle ms/s Connect':>18} {'broker':>7}")
    for name, s in summary.items():
        print(f"  {name:<22} {s['capture_events_per_s']:>10,.0f} {s['vs_baseline']:>11.3f} "
              f"{s['vs_write_rate']:>10.3f} {s['connect_cpu_us_per_event']:>17.1f} {s['broker_cpu_us_per_event']:>16.1f} "
              f"{s['connect_idle_ms_per_s']:>18.1f} {s['broker_idle_ms_per_s']:>7.1f}")


if __name__ == "__main__":
    main()
