"""How soon Debezium confirms a position, and what the Connect worker costs meanwhile.

A cutover's drain waits inside the write pause until each source's slot confirms a
heartbeat committed after the fence; that wait is set by the Connect worker's
``offset.flush.interval.ms`` and the connector's polling. This bench starts a migration
on the embedded stack (no applier: only the confirmation is timed), then commits
heartbeats one after another and times each until the slot confirms it, the way the drain
does, and until its record is in Kafka (the record's CreateTime): capture, then the offset
commit; meanwhile it reads the Connect worker's CPU time from /proc. Run it on stacks whose worker differs in one setting (the stack reads
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

import psycopg
from confluent_kafka import Consumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_pg_version, created_split, load_average, tree_cpu  # noqa: E402
from reshard.config import Config, state_dir  # noqa: E402
from reshard.kafka.streams import Stream, forward  # noqa: E402
from reshard.proof.catchup import confirm_delay  # noqa: E402
from reshard.stack import Stack  # noqa: E402
from reshard.stack.connect import OFFSET_FLUSH_MS  # noqa: E402

DB, NAME = "bench_confirm", "benchconfirm"


def timed_heartbeats(config: Config, stream: Stream, samples: int) -> list[tuple[float, float]]:
    """Per heartbeat committed: ms from its commit to its record in Kafka (the record's
    CreateTime, set when Connect's producer sent it) and to the slot confirming a position
    read before it, as a cutover's drain waits for it."""
    consumer = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers, "group.id": f"{NAME}-{time.time_ns()}",
                         "auto.offset.reset": "latest", "fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
    consumer.subscribe([stream.heartbeat_topics[1]])
    for _ in range(30):  # assigned, at the end of the topic
        consumer.poll(0.1)
    out = []
    with psycopg.connect(config.cluster(stream.cluster).dsn, autocommit=True) as conn:
        for _ in range(samples):
            x = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            committed = time.time()
            conn.execute("UPDATE reshard.heartbeat SET beat = beat + 1, at = now() WHERE migration = %s", (NAME,))
            produced = confirmed = None
            while (produced is None or confirmed is None) and time.time() - committed < 5:
                m = consumer.poll(0.002)
                if m is not None and not m.error():
                    produced = m.timestamp()[1] / 1000
                if confirmed is None and conn.execute(
                        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                        (x, stream.slot)).fetchone()[0]:
                    confirmed = time.time()
            if produced is None or confirmed is None:
                raise SystemExit("a heartbeat was not produced and confirmed within 5 s: is the connector running?")
            out.append(((produced - committed) * 1000, (confirmed - committed) * 1000))
            time.sleep(0.037)  # not in step with the worker's timers
    consumer.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()

    config, co, _new = created_split(args.pg_version, DB, NAME, 2_000, ["target1", "target2"])
    home = state_dir() / f"pg{args.pg_version}" if args.pg_version else state_dir()
    connect_pid = next(p.pid for p in Stack(home).status() if p.name == "connect" and p.pid)
    stream = forward(NAME, "source1")
    try:
        co.start(NAME)
        confirm_delay(config, NAME, [stream], samples=5)  # the task is up and streaming
        cpu0, t0 = tree_cpu(connect_pid), time.monotonic()
        took = timed_heartbeats(config, stream, args.samples)
        cpu_per_s = (tree_cpu(connect_pid) - cpu0) / (time.monotonic() - t0)
    finally:
        co.teardown(NAME)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 1)

    confirm = [c for _p, c in took]
    q = statistics.quantiles(confirm, n=10)
    doc = {"benchmark": "confirm_delay", "offset_flush_ms": OFFSET_FLUSH_MS, "samples": len(took),
           "median_ms": median(confirm), "p10_ms": round(q[0], 1), "p90_ms": round(q[-1], 1),
           "commit_to_kafka_median_ms": median([p for p, _c in took]),
           "kafka_to_confirmed_median_ms": median([c - p for p, c in took]),
           "connect_cpu_s_per_s": round(cpu_per_s, 3), "load": load_average()}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"offset.flush.interval.ms={OFFSET_FLUSH_MS}: a heartbeat confirmed in {doc['median_ms']:.0f} ms median "
          f"(p10 {doc['p10_ms']:.0f}, p90 {doc['p90_ms']:.0f}; {len(took)} samples): its record reached Kafka after "
          f"{doc['commit_to_kafka_median_ms']:.0f} ms, the slot confirmed {doc['kafka_to_confirmed_median_ms']:.0f} ms "
          f"later (medians); Connect used {doc['connect_cpu_s_per_s']:.3f} CPU-s per s meanwhile (load {doc['load']})")


if __name__ == "__main__":
    main()
