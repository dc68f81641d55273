"""How soon Debezium confirms a position, and what the Connect worker costs meanwhile.

A cutover's drain waits inside the write pause until each source's slot confirms a
heartbeat committed after the fence; that wait is set by the Connect worker's
``offset.flush.interval.ms`` and the connector's polling. This bench starts a migration
on the embedded stack (no applier: only the confirmation is timed), then commits
heartbeats one after another and times each until the slot confirms it, the way the drain
does (``reshard.proof.catchup.confirm_delay``); meanwhile it reads the Connect worker's CPU
time from /proc. Run it on stacks whose worker differs in one setting (the stack reads
``OFFSET_FLUSH_MS`` in reshard/stack/connect.py when it starts) and compare.

    .venv/bin/python bench/confirm_delay.py [--samples 60] [--pg-version 18] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_pg_version, created_split, load_average, tree_cpu  # noqa: E402
from reshard.config import state_dir  # noqa: E402
from reshard.kafka.streams import forward  # noqa: E402
from reshard.proof.catchup import confirm_delay  # noqa: E402
from reshard.stack import Stack  # noqa: E402
from reshard.stack.connect import OFFSET_FLUSH_MS  # noqa: E402

DB, NAME = "bench_confirm", "benchconfirm"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()

    config, co, _new = created_split(args.pg_version, DB, NAME, 2_000, ["target1", "target2"])
    home = state_dir() / f"pg{args.pg_version}" if args.pg_version else state_dir()
    connect_pid = next(p.pid for p in Stack(home).status() if p.name == "connect" and p.pid)
    try:
        co.start(NAME)
        confirm_delay(config, NAME, [forward(NAME, "source1")], samples=5)  # the task is up and streaming
        took: list[float] = []
        cpu0, t0 = tree_cpu(connect_pid), time.monotonic()
        for _ in range(args.samples):
            ms = confirm_delay(config, NAME, [forward(NAME, "source1")], samples=1)["source1"]
            if ms is None:
                raise SystemExit("a heartbeat was not confirmed within 5 s: is the connector running?")
            took.append(ms)
        cpu_per_s = (tree_cpu(connect_pid) - cpu0) / (time.monotonic() - t0)
    finally:
        co.teardown(NAME)
    q = statistics.quantiles(took, n=10)
    doc = {"benchmark": "confirm_delay", "offset_flush_ms": OFFSET_FLUSH_MS, "samples": len(took),
           "median_ms": round(statistics.median(took), 1), "p10_ms": round(q[0], 1), "p90_ms": round(q[-1], 1),
           "connect_cpu_s_per_s": round(cpu_per_s, 3), "load": load_average()}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"offset.flush.interval.ms={OFFSET_FLUSH_MS}: a heartbeat confirmed in {doc['median_ms']:.0f} ms median "
          f"(p10 {doc['p10_ms']:.0f}, p90 {doc['p90_ms']:.0f}; {len(took)} samples); Connect used "
          f"{doc['connect_cpu_s_per_s']:.3f} CPU-s per s meanwhile (load {doc['load']})")


if __name__ == "__main__":
    main()
