"""How fast the applier drains a backlog, against the rate the source wrote it at and
against the Debezium JDBC sink connector draining the same records.

Setup on the embedded stack: accounts seeded on source1 and split to target1/target2
(every key moves), the copy done, Debezium streaming. Each round, with no applier
running, pgbench writes a burst of single-row updates on source1 (its own tps is the
rate the backlog is written at). Debezium is paused during the burst, then timed from
its resume to the slot confirming the burst (the capture rate). Then, in alternating
order, N `reshard apply` processes are timed until they have committed every record of
the burst, and the Debezium JDBC sink (the newest on Maven Central, on the same Connect
worker, N tasks, upsert by the value's primary key, batch 2000 like the applier's) is
timed draining the same records of the same topic into the same table in a database
of its own on target1. Rounds alternate 1 and 2 workers. Then one transaction inserts 300,000 rows
and the same is timed with one worker. Printed: medians of each figure and the ratios
(drain / write, capture / drain, 2 workers / 1, reshard / JDBC sink), and the big
transaction's rates.

    .venv/bin/python bench/apply_throughput.py [--rounds 3] [--updates 200000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_pg_version, fresh_databases, load_average, median, seed_split, stack_config  # noqa: E402
from reshard.cdc_applier.connector import converters  # noqa: E402
from reshard.config import KafkaConfig, write_config  # noqa: E402
from reshard.coordinator import Coordinator  # noqa: E402
from reshard.kafka.admin import (
    KafkaAdmin,  # noqa: E402
    client_conf,  # noqa: E402
)
from reshard.kafka.connect_client import ConnectClient  # noqa: E402
from reshard.maps.shardmap import parse_map  # noqa: E402
from reshard.proof.catchup import applier_group, mark_positions, wait_confirmed  # noqa: E402
from reshard.stack.workload import create_table, seed  # noqa: E402

FORMATS = ("avro", "json")  # kafka.format

DB = "bench_apply"
NAME = "benchapply"
TARGETS = ["target1", "target2"]


def pgbench_burst(dsn: str, rows: int, updates: int, clients: int, tmp: Path) -> float:
    """Run the burst; returns pgbench's tps (excluding connection set-up)."""
    script = tmp / "update.sql"
    script.write_text(f"\\set id random(1, {rows})\n"
                      "UPDATE public.accounts SET balance = balance + 1 WHERE id = :id;\n")
    out = subprocess.run(["pgbench", "-n", "-f", str(script), "-c", str(clients), "-j", str(min(clients, 2)),
                          "-t", str(updates // clients), dsn], capture_output=True, text=True, check=True).stdout
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if not m:
        raise SystemExit(f"cannot read pgbench's tps from:\n{out}")
    return float(m.group(1))


JDBC_DB = "bench_jdbc"
JDBC_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"


def jdbc_target(config, rows: int) -> str:
    """A database of its own on target1 holding every account, as the JDBC sink's target."""
    admin = psycopg.conninfo.make_conninfo(config.cluster("target1").dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{JDBC_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{JDBC_DB}"')
    dsn = psycopg.conninfo.make_conninfo(config.cluster("target1").dsn, dbname=JDBC_DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_table(conn)
        seed(conn, rows)
    return dsn


def jdbc_sink_config(config, dsn: str, topic: str, tasks: int) -> dict[str, str]:
    """The sink reads the topic with the converter Debezium wrote it with (Avro: the same
    Apicurio converter, deserializing by schema id)."""
    c = psycopg.conninfo.conninfo_to_dict(dsn)
    return {
        "connector.class": JDBC_CLASS, "tasks.max": str(tasks), "topics": topic,
        # decimals arrive as strings (decimal.handling.mode=string): let the server cast them
        "connection.url": f"jdbc:postgresql://{c.get('host', '127.0.0.1')}:{c.get('port', 5432)}/{JDBC_DB}"
                          "?stringtype=unspecified",
        "connection.username": str(c.get("user", "postgres")), "connection.password": str(c.get("password", "")),
        "insert.mode": "upsert", "primary.key.mode": "record_value", "primary.key.fields": "id",
        "delete.enabled": "false", "schema.evolution": "none", "collection.name.format": "accounts",
        "batch.size": "2000", "consumer.override.max.poll.records": "2000",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter", "key.converter.schemas.enable": "false",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter", "value.converter.schemas.enable": "true",
        "errors.tolerance": "none",
        **converters(config),
    }


def commit_offsets(kafka: KafkaConfig, group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Place a (new) consumer group at ``offsets``, so a sink starts at the burst."""
    consumer = Consumer({**client_conf(kafka), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def wait_group(admin: KafkaAdmin, group: str, topics: list[str], start: dict, ends: dict, alive) -> dict:
    """Time ``group`` from its first committed progress to the end offsets ``ends``."""
    records = sum(e - start.get(tp, 0) for tp, e in ends.items())
    spawned = time.monotonic()
    first = None
    while True:
        done = admin.committed(group, topics)
        now = time.monotonic()
        if first is None and sum(done.get(tp, 0) - start.get(tp, 0) for tp in ends) > 0:
            first = now
        if all(done.get(tp, 0) >= e for tp, e in ends.items()):
            break
        if now - spawned > 600:
            raise SystemExit(f"{group} did not drain the burst within 600 s")
        alive()
        time.sleep(0.05)
    end = time.monotonic()
    first = first or end
    return {"records": records, "events_per_s": round(records / max(end - first, 1e-3)),
            "events_per_s_with_startup": round(records / max(end - spawned, 1e-3))}


def jdbc_drain(config, connect: ConnectClient, admin: KafkaAdmin, dsn: str, topic: str, tasks: int,
               start: dict, label: str) -> dict:
    """A fresh JDBC sink connector placed at the burst's start, timed to its end."""
    name = f"bench-jdbc-sink-{label}"
    group = f"connect-{name}"
    ends = admin.end_offsets([topic])
    commit_offsets(config.kafka, group, {tp: start.get(tp, 0) for tp in ends})
    connect.put(name, jdbc_sink_config(config, dsn, topic, tasks))

    def alive() -> None:
        st = connect.status(name) or {}
        failed = [t for t in st.get("tasks", []) if t.get("state") == "FAILED"]
        if failed:
            raise SystemExit(f"the JDBC sink failed: {failed[0].get('trace', '')[:2000]}")

    try:
        return wait_group(admin, group, [topic], start, ends, alive)
    finally:
        connect.delete(name)


def big_transaction(dsn: str, rows: int) -> float:
    """One transaction inserting ``rows`` new accounts (keys above every existing one);
    returns its rows/s."""
    with psycopg.connect(dsn) as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM public.accounts").fetchone()[0]
        t0 = time.monotonic()
        conn.execute("INSERT INTO public.accounts (id, owner, balance) SELECT g, 'bulk-' || g, 0 "
                     "FROM generate_series(%s::bigint, %s::bigint) g", (first, first + rows - 1))
        conn.commit()
        return rows / (time.monotonic() - t0)


def drain(cfg: Path, admin: KafkaAdmin, topics: list[str], workers: int, tmp: Path) -> dict:
    """Start ``workers`` appliers, time them to the end offsets read now, stop them."""
    group = applier_group(NAME)
    ends = admin.end_offsets(topics)
    start = admin.committed(group, topics)
    procs = [subprocess.Popen([sys.executable, "-m", "reshard.cli", "--config", str(cfg), "--progress", "off",
                               "apply", NAME], stdout=subprocess.DEVNULL,
                              stderr=open(tmp / f"apply{i}.log", "ab")) for i in range(workers)]

    def alive() -> None:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"an applier exited with {p.returncode}: see {tmp}")

    try:
        return wait_group(admin, group, topics, start, ends, alive)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds per worker count (alternating)")
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--updates", type=int, default=200_000,
                    help="single-row updates per burst (large enough that group start-up is not the measure)")
    ap.add_argument("--clients", type=int, default=4, help="pgbench clients")
    ap.add_argument("--no-jdbc", action="store_true", help="skip the Debezium JDBC sink comparison")
    ap.add_argument("--big-tx", type=int, default=300_000,
                    help="then one transaction inserting this many rows, drained by one worker (0: skip)")
    ap.add_argument("--format", choices=FORMATS, default=None,
                    help="how Debezium encodes the events (default: reshard.yaml's kafka.format, avro)")
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()

    config = fresh_databases(stack_config(args.pg_version), DB, NAME)
    if args.format:
        config = replace(config, kafka=replace(config.kafka, format=args.format))
    before, after = seed_split(config, args.rows, TARGETS)
    co = Coordinator.open(config)
    co.create(NAME, parse_map(after, config.clusters), parse_map(before, config.clusters))
    co.start(NAME)
    tmp = Path(tempfile.mkdtemp(prefix="reshard-bench-"))
    cfg = tmp / "reshard.yaml"
    write_config(config, cfg)
    streams, topics = co.streams(NAME)
    connect = ConnectClient(config.connect)
    connector = streams[0].connector
    topic = next(t for t in topics if t.endswith(".accounts"))
    jdbc_dsn = "" if args.no_jdbc else jdbc_target(config, args.rows)
    src_dsn = config.cluster("source1").dsn
    rounds: list[dict] = []
    try:
        with KafkaAdmin(config.kafka) as admin:
            drain(cfg, admin, topics, 1, tmp)  # join the group once and apply the copy-time changes

            def burst(shape: str, write, events: int, workers: int, label: str, reshard_first: bool) -> None:
                # Debezium paused while the source writes: then its capture is timed on its own
                connect.pause(connector)
                write_tps = write()
                positions = mark_positions(config, NAME, streams)
                t0 = time.monotonic()
                connect.resume(connector)
                wait_confirmed(config, positions, time.monotonic() + 600)
                capture = events / (time.monotonic() - t0)
                start = admin.committed(applier_group(NAME), [topic])  # where this burst begins
                jdbc: dict = {}
                for kind in ("reshard", "jdbc") if reshard_first else ("jdbc", "reshard"):
                    if kind == "reshard":
                        d = drain(cfg, admin, topics, workers, tmp)
                    elif not args.no_jdbc:
                        jdbc = jdbc_drain(config, connect, admin, jdbc_dsn, topic, workers, start, label)
                row = {"shape": shape, "workers": workers, "write_tps": round(write_tps),
                       "capture_events_per_s": round(capture), **d, "jdbc_events_per_s": jdbc.get("events_per_s"),
                       "load": load_average()}
                rounds.append(row)
                print(f"{label}, {shape}, {workers} worker(s): written at {write_tps:,.0f} rows/s, Debezium captured "
                      f"{capture:,.0f} events/s, applier drained {d['records']:,} at {d['events_per_s']:,} "
                      f"events/s ({d['events_per_s_with_startup']:,} with start-up), JDBC sink "
                      f"{row['jdbc_events_per_s'] or '-'} events/s; load {row['load']}", file=sys.stderr, flush=True)

            for r in range(args.rounds):
                for workers in (1, 2) if r % 2 == 0 else (2, 1):
                    burst("single-row", lambda: pgbench_burst(src_dsn, args.rows, args.updates, args.clients, tmp),
                          args.updates, workers, f"round{r + 1}-{workers}", (r + workers) % 2 == 1)
            if args.big_tx:
                burst("one transaction", lambda: big_transaction(src_dsn, args.big_tx), args.big_tx, 1, "big",
                      True)
    finally:
        co.teardown(NAME)

    def med(key: str, workers: int) -> float:
        return median([x[key] for x in rounds if x["workers"] == workers and x["shape"] == "single-row"])

    one, two = med("events_per_s", 1), med("events_per_s", 2)
    doc = {
        "benchmark": "apply_throughput", "version": 1, "format": config.kafka.format, "rounds": args.rounds, "updates_per_burst": args.updates,
        "pgbench_clients": args.clients, "cpus": os.cpu_count(),
        "write_tps": med("write_tps", 1), "capture_events_per_s": med("capture_events_per_s", 1),
        "apply_events_per_s_1_worker": one, "apply_events_per_s_2_workers": two,
        "ratio_apply_to_write": round(one / med("write_tps", 1), 2),
        "ratio_capture_to_apply": round(med("capture_events_per_s", 1) / one, 2),
        "ratio_2_workers_to_1": round(two / one, 2), "all": rounds,
    }
    if not args.no_jdbc:
        j1, j2 = med("jdbc_events_per_s", 1), med("jdbc_events_per_s", 2)
        doc.update(jdbc_sink_events_per_s_1_task=j1, jdbc_sink_events_per_s_2_tasks=j2,
                   ratio_apply_to_jdbc_sink=round(one / j1, 2), ratio_apply_to_jdbc_sink_2=round(two / j2, 2))
    big = next((x for x in rounds if x["shape"] == "one transaction"), None)
    if big:
        doc["one_transaction"] = {"rows": args.big_tx, "apply_events_per_s": big["events_per_s"],
                                  "jdbc_sink_events_per_s": big["jdbc_events_per_s"],
                                  "capture_events_per_s": big["capture_events_per_s"]}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"apply throughput, {config.kafka.format} events, medians of {args.rounds} rounds each "
          f"({args.updates:,} single-row updates per burst, {args.clients} pgbench clients, {os.cpu_count()} CPUs)")
    print(f"  pgbench write rate           {doc['write_tps']:>10,.0f} tx/s")
    print(f"  Debezium capture rate        {doc['capture_events_per_s']:>10,.0f} events/s")
    print(f"  applier, 1 worker            {one:>10,.0f} events/s   ratio to the write rate {doc['ratio_apply_to_write']}")
    print(f"  applier, 2 workers           {two:>10,.0f} events/s   ratio to 1 worker {doc['ratio_2_workers_to_1']}")
    print(f"  capture / apply (1 worker)   {doc['ratio_capture_to_apply']:>10}")
    if big:
        b = doc["one_transaction"]
        print(f"  one {args.big_tx:,}-row transaction: Debezium {b['capture_events_per_s']:,} events/s, applier "
              f"{b['apply_events_per_s']:,} events/s, JDBC sink {b['jdbc_sink_events_per_s'] or '-'} events/s")
    if not args.no_jdbc:
        print(f"  Debezium JDBC sink, 1 task   {doc['jdbc_sink_events_per_s_1_task']:>10,.0f} events/s   "
              f"applier / sink {doc['ratio_apply_to_jdbc_sink']}")
        print(f"  Debezium JDBC sink, 2 tasks  {doc['jdbc_sink_events_per_s_2_tasks']:>10,.0f} events/s   "
              f"applier / sink {doc['ratio_apply_to_jdbc_sink_2']}")


if __name__ == "__main__":
    main()
