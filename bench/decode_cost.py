"""What the applier's CPU-bound stage costs per record, in the same process, on real Debezium records:
the decode of each Kafka record into a change event and its routing to a target (``batch.prepare``),
with no Kafka, no database and no other process on the clock. Core-count-independent: the rate one
worker's polling thread can reach on one core.

Setup on the embedded stack: the narrow table (``--shape narrow``: id bigint, a int, b text of 96
chars, c numeric(12,2), d timestamptz) or the demo's wide one (``--shape wide``: jsonb, a TOASTed
text), split 1 -> 2 and started with no applier; pgbench writes ``--events`` single-row updates of
random keys; the records Debezium produced (Avro through the registry, or ``--format json``) are read
from Kafka into memory. Then, ``--rounds`` times, alternating, each timed over every record:

- ``fastavro``: the generic Avro reader alone (``fastavro.schemaless_reader`` with the writer schema),
  the envelope decode the applier used until the specialised reader;
- ``decode (generic)``: the whole decode into change events on fastavro;
- ``decode``: the whole decode as the applier runs it;
- ``route``: the routing of the decoded events alone (the target of each key, with the route memo
  empty at the start, as it is for a burst's new keys);
- ``prepare``: decode and route a polled batch (``--batch`` records at a time), as the applier's polling
  thread does.

Printed: µs per record (median of the rounds) and the specialised decode against the generic one.

    .venv/bin/python bench/decode_cost.py [--events 40000] [--rounds 5] [--shape narrow|wide]
        [--format avro|json] [--batch 2000] [--pg-version N] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    SHAPES,
    add_pg_version,
    fresh_databases,
    load_average,
    median,
    seed_split,
    stack_config,
)
from reshard.cdc_applier import avro, decode  # noqa: E402
from reshard.cdc_applier.batch import prepare  # noqa: E402
from reshard.cdc_applier.route import Router  # noqa: E402
from reshard.config import Config  # noqa: E402
from reshard.coordinator import Coordinator  # noqa: E402
from reshard.kafka.admin import client_conf  # noqa: E402
from reshard.kafka.streams import forward  # noqa: E402
from reshard.maps.planner import plan  # noqa: E402
from reshard.maps.shardmap import parse_map  # noqa: E402
from reshard.snapshotter.throttle import ThrottleSettings  # noqa: E402

DB = "bench_decode"
NAME = "benchdecode"
TARGETS = ["target1", "target2"]
UPDATES = {"narrow": "UPDATE public.accounts SET a = a + 1 WHERE id = :id;",
           "wide": "UPDATE public.accounts SET balance = balance + 1 WHERE id = :id;"}


def record(config: Config, shape: str, rows: int, events: int) -> tuple[list[Message], Router, Any]:
    """Debezium's records of a burst of ``events`` single-row updates, the router and the schemas."""
    before, after = seed_split(config, rows, TARGETS, shape)
    co = Coordinator.open(config)
    old, new = parse_map(before, config.clusters), parse_map(after, config.clusters)
    co.create(NAME, new, old)
    co.start(NAME, throttle=ThrottleSettings(adaptive=False))
    p = plan(old, new)
    streams = [forward(NAME, s) for s in p.sources()]
    router = Router(p, streams)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "update.sql"
        script.write_text(f"\\set id random(1, {rows})\n{UPDATES[shape]}\n")
        subprocess.run(["pgbench", "-n", "-c", "4", "-j", "2", "-t", str(events // 4), "-f", str(script),
                        config.cluster("source1").dsn], check=True, capture_output=True)
    consumer = Consumer({**client_conf(config.kafka), "group.id": f"{NAME}-bench", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe(router.topics)
    got: list[Message] = []
    deadline = time.monotonic() + 300
    try:
        while len(got) < events // 4 * 4:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(got):,} of {events:,} records reached Kafka within 300 s")
            for m in consumer.consume(5000, timeout=0.5):
                if m.error() is None and m.value() is not None:
                    got.append(m)
    finally:
        consumer.close()
        co.teardown(NAME)
    url = config.kafka.schema_registry_url
    return got, router, avro.WriterSchemas(url) if url else None


def per_record_us(fn: Callable[[], Any], n: int) -> float:
    started = time.process_time()
    fn()
    return (time.process_time() - started) * 1e6 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2000, help="records per prepared batch (the applier polls up to "
                                                           "its --batch-size)")
    ap.add_argument("--shape", choices=SHAPES, default="narrow")
    ap.add_argument("--format", choices=("avro", "json"), default="avro")
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()
    base = stack_config(args.pg_version)
    base = replace(base, kafka=replace(base.kafka, format=args.format))
    config = fresh_databases(base, DB, NAME)
    recs, router, schemas = record(config, args.shape, args.rows, args.events)
    n = len(recs)
    if schemas is not None:  # fetch the writer schemas before the clock runs
        decode.decode(recs[0].key(), recs[0].value(), schemas)
        if not schemas.compiled:
            print("the compiled envelope reader is not built here: both decodes are fastavro's", file=sys.stderr)
    print(f"{n:,} records of {args.shape} rows ({args.format}), {sum(len(r.value() or b'') for r in recs) / n:,.0f} "
          f"bytes each on average; load {load_average()}", file=sys.stderr)

    generic = avro.WriterSchemas(schemas.url, compiled=False) if schemas is not None else None
    if generic is not None:
        decode.decode(recs[0].key(), recs[0].value(), generic)

    def fastavro_only() -> None:
        for r in recs:
            data = r.value()
            avro.read(data, generic.parsed(avro.schema_id(data)))

    def decode_with(with_schemas: Any) -> Callable[[], None]:
        def run() -> None:
            for r in recs:
                decode.decode(r.key(), r.value(), with_schemas)
        return run

    events = [(decode.decode(r.key(), r.value(), schemas), router.stream_of(r.topic())) for r in recs]

    def routed() -> None:
        fresh = Router(router.plan, router.streams)  # a burst's keys are new to the route memo
        for ev, stream in events:
            fresh.target(ev, stream)

    def prepared() -> None:
        fresh = Router(router.plan, router.streams)
        for i in range(0, n, args.batch):
            prepare(recs[i:i + args.batch], fresh, schemas)

    cases: dict[str, Callable[[], None]] = {}
    if args.format == "avro":
        cases["fastavro"] = fastavro_only
        cases["decode (generic)"] = decode_with(generic)
    cases["decode"] = decode_with(schemas)
    cases["route"] = routed
    cases["prepare"] = prepared
    runs: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.rounds):
        for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
            runs[name].append(per_record_us(cases[name], n))
    table = {k: median(v) for k, v in runs.items()}
    ratio = table["decode"] / table["decode (generic)"] if "decode (generic)" in table else None
    if args.json:
        print(json.dumps({"records": n, "shape": args.shape, "format": args.format, "rounds": args.rounds,
                          "us_per_record": table, "runs": runs, "decode_vs_generic": ratio,
                          "load": load_average()}, indent=2))
        return
    print(f"CPU-µs per record, {n:,} records, medians of {args.rounds} rounds (one core, in process)")
    for k, v in table.items():
        print(f"  {k:<18} {v:>7.2f}   ({', '.join(f'{x:.2f}' for x in runs[k])})")
    if ratio is not None:
        print(f"  decode / decode (generic): {ratio:.2f}")
    print(f"  load now {load_average()}")


if __name__ == "__main__":
    main()
