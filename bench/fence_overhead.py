"""Writes per second with and without reshard's fence trigger, in the same run.

pgbench drives a TPC-B-like transaction against one embedded cluster: update one
account, insert one history row, both tables sharded by account id under a hash map
in which this cluster owns half the buckets (so the trigger evaluates the real
predicate: partition hash, bucket, multirange containment). The two setups alternate
for --rounds rounds of --seconds each; the figures are medians and their ratio.

Two configurations are measured: durable commits (the default, where WAL flushes
dominate and dilute the trigger's cost) and synchronous_commit = off (CPU-bound, the
trigger's worst case).

    .venv/bin/python bench/fence_overhead.py [--rounds 5] [--seconds 8] [--clients 2]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reshard.cluster import fence, shard_schema  # noqa: E402
from reshard.config import state_dir  # noqa: E402
from reshard.maps.shardmap import parse_map  # noqa: E402
from reshard.stack import Stack  # noqa: E402
from reshard.stack.pg_binaries import bindir as find_bindir  # noqa: E402

DB = "bench_fence"
MAP = parse_map({"groups": {"accounts": {"key": "bigint", "tables": {
    "public.accounts": "id", "public.history": "account_id"},
    "hash": {"buckets": 4096, "clusters": {"source1": "0-2047", "target1": "2048-4095"}}}}})
SCRIPT = """\\set i random(1, :n)
SELECT id AS k FROM owned WHERE i = :i \\gset
BEGIN;
UPDATE accounts SET balance = balance + 1 WHERE id = :k;
INSERT INTO history (account_id, delta) VALUES (:k, 1);
END;
"""


def prepare(admin_dsn: str, dsn: str, accounts: int) -> int:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    group = MAP.groups["accounts"]
    owned = group.scheme.predicate_sql([sql.Identifier("g")], group.key_types, "source1").as_string(None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        shard_schema.install(conn)
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric NOT NULL DEFAULT 0)")
        conn.execute("CREATE TABLE history (id bigserial PRIMARY KEY, account_id bigint NOT NULL, "
                     "delta numeric NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        conn.execute(f"INSERT INTO accounts (id) SELECT g FROM generate_series(1, {accounts * 2}) g WHERE {owned}")
        conn.execute("CREATE TABLE owned (i serial PRIMARY KEY, id bigint NOT NULL)")
        conn.execute("INSERT INTO owned (id) SELECT id FROM accounts ORDER BY id")
        conn.execute("VACUUM ANALYZE")
        return conn.execute("SELECT count(*) FROM owned").fetchone()[0]


def pgbench(bindir: Path, port: int, script: Path, n: int, seconds: int, clients: int) -> float:
    proc = subprocess.run(
        [str(bindir / "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-n",
         "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-D", f"n={n}", "-f", str(script), DB],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"pgbench failed: {proc.stderr or proc.stdout}")
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", proc.stdout)
    if not m:
        raise SystemExit(f"cannot read tps from pgbench output:\n{proc.stdout}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--accounts", type=int, default=50_000, help="accounts on the benchmarked shard")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()

    st = Stack(state_dir())
    if not st.is_up():
        st.up()
    config = st.config()
    src = config.cluster("source1")
    port = int(src.params()["port"])
    admin = psycopg.conninfo.make_conninfo(src.dsn, dbname="postgres")
    dsn = psycopg.conninfo.make_conninfo(src.dsn, dbname=DB)
    n = prepare(admin, dsn, args.accounts)
    bindir = find_bindir()
    docs = []
    for sync in ("on", "off"):
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{DB}" SET synchronous_commit = {sync}')
        docs.append(measure(bindir, port, dsn, n, args, sync))
    if args.json:
        print(json.dumps(docs, indent=2))
        return
    for d in docs:
        print(f"synchronous_commit={d['synchronous_commit']}: without fence {d['tps_without_fence']:,} tx/s, "
              f"with fence {d['tps_with_fence']:,} tx/s (medians of {args.rounds}); ratio {d['ratio']:.3f}, "
              f"~{d['added_us_per_row_write']} us added per row write")


def measure(bindir: Path, port: int, dsn: str, n: int, args, sync: str) -> dict:
    results: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "tx.sql"
        script.write_text(SCRIPT)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for r in range(args.rounds):
                for setup in ("without", "with") if r % 2 == 0 else ("with", "without"):
                    if setup == "with":
                        fence.install(conn, fence.steady("source1", 1, MAP))
                    else:
                        fence.remove(conn, MAP.tables())
                    tps = pgbench(bindir, port, script, n, args.seconds, args.clients)
                    results[setup].append(tps)
                    print(f"synchronous_commit={sync} round {r + 1}: {setup:>7} fence {tps:>9,.0f} tx/s",
                          file=sys.stderr, flush=True)
            fence.remove(conn, MAP.tables())
    base, fenced = statistics.median(results["without"]), statistics.median(results["with"])
    # each transaction writes two rows; the per-row cost is what the trigger adds to one write
    per_row_us = (args.clients / fenced - args.clients / base) / 2 * 1e6
    return {"benchmark": "fence_overhead", "synchronous_commit": sync, "rounds": args.rounds,
            "seconds": args.seconds, "clients": args.clients, "tps_without_fence": round(base),
            "tps_with_fence": round(fenced), "ratio": round(fenced / base, 3),
            "added_us_per_row_write": round(per_row_us, 1), "all": results}


if __name__ == "__main__":
    main()
