"""What every benchmark needs: the embedded stack, and databases of its own on it."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reshard.config import ClusterConfig, Config, state_dir  # noqa: E402
from reshard.kafka.connect_client import ConnectClient  # noqa: E402
from reshard.stack import Stack, pg_binaries  # noqa: E402
from reshard.stack.stack import PgVersions  # noqa: E402


def add_pg_version(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--pg-version", type=int, choices=pg_binaries.SUPPORTED, default=None,
                    help=f"run on a stack of this PostgreSQL major (its own, in <state dir>/pgN; default: the "
                         f"state dir's stack, created on {pg_binaries.DEFAULT})")


def stack_config(major: int | None = None) -> Config:
    """The embedded stack's config, bringing the stack up if it is not running (a stack of
    ``major`` lives beside the default one, so both can be measured in turn)."""
    st = Stack(state_dir() / f"pg{major}" if major else state_dir())
    if not st.is_up():
        st.up(pg=PgVersions(default=major))
    config = st.config()
    with psycopg.connect(config.cluster("source1").dsn) as conn:
        print(f"bench stack: PostgreSQL {conn.info.server_version // 10000} (sources and targets)", file=sys.stderr)
    return config


def fresh_database(server_dsn: str, db: str) -> str:
    """Database ``db`` on the server of ``server_dsn``, dropped first with its replication
    slots; returns its DSN."""
    admin = psycopg.conninfo.make_conninfo(server_dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                    (db,)).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    return psycopg.conninfo.make_conninfo(server_dsn, dbname=db)


def fresh_databases(base: Config, db: str, migration: str) -> Config:
    """A database of its own on every cluster (and a control database), dropped first
    with the migration's connectors and slots."""
    client = ConnectClient(base.connect)
    for c in client.connectors():
        if c.startswith(f"reshard-{migration}-"):
            client.delete(c)
    clusters = {}
    for name, c in base.clusters.items():
        dsn = fresh_database(c.dsn, db)
        clusters[name] = ClusterConfig(name, dsn, dsn)
    admin = psycopg.conninfo.make_conninfo(base.control_dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    return replace(base, path=None, control_dsn=psycopg.conninfo.make_conninfo(base.control_dsn, dbname=db),
                   clusters=clusters)


# the narrow rows (per-row costs show; the demo's wide rows, jsonb and a TOASTed text, hide them)
NARROW = ("CREATE TABLE public.accounts (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, "
          "c numeric(12,2) NOT NULL, d timestamptz NOT NULL)")
SHAPES = ("wide", "narrow")


def seed_narrow(config: Config, rows: int, targets: list[str]) -> None:
    """The narrow table on source1 (``rows`` rows, b 96 characters, analyzed) and empty on ``targets``."""
    for c in ("source1", *targets):
        with psycopg.connect(config.cluster(c).dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS public.accounts")
            conn.execute(NARROW)
    with psycopg.connect(config.cluster("source1").dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.accounts SELECT g, g %% 1000, repeat(md5(g::text), 3), g * 1.5, now() "
                     "FROM generate_series(1, %s) g", (rows,))
        conn.execute("VACUUM ANALYZE public.accounts")


def seed_split(config: Config, rows: int, targets: list[str], shape: str = "wide") -> tuple[dict, dict]:
    """The sample table on source1 (``rows`` rows, analyzed) and empty on the targets, the demo's
    wide rows or the narrow ones; returns the demo's (before, after) maps, which move every key
    to the targets."""
    from reshard.stack.demo import demo_maps
    from reshard.stack.workload import TABLE, create_table, seed

    if shape == "narrow":
        seed_narrow(config, rows, targets)
        return demo_maps(targets)
    for c in ("source1", *targets):
        with psycopg.connect(config.cluster(c).dsn, autocommit=True) as conn:
            create_table(conn)
    with psycopg.connect(config.cluster("source1").dsn, autocommit=True) as conn:
        seed(conn, rows)
        conn.execute(f"VACUUM ANALYZE {TABLE}")
    return demo_maps(targets)


def created_split(major: int | None, db: str, name: str, rows: int, targets: list[str]):
    """Databases of their own on the stack (``major``'s), the sample table seeded and split to
    ``targets``, migration ``name`` created: (config, coordinator, the new map)."""
    from reshard.coordinator import Coordinator
    from reshard.maps.shardmap import parse_map

    config = fresh_databases(stack_config(major), db, name)
    before, after = seed_split(config, rows, targets)
    co = Coordinator.open(config)
    new_map = parse_map(after, config.clusters)
    co.create(name, new_map, parse_map(before, config.clusters))
    return config, co, new_map


TICK = os.sysconf("SC_CLK_TCK")
ASYNC_COMMIT_HELP = ("pgbench commits with synchronous_commit=off, so the burst is written as fast as the machine "
                     "allows instead of at this disk's flush rate")


def pgbench_env(async_commit: bool) -> dict[str, str] | None:
    """pgbench's environment: commits without waiting on the disk flush when asked."""
    return {**os.environ, "PGOPTIONS": "-c synchronous_commit=off"} if async_commit else None


def _stat(pid: int) -> tuple[float, float, int]:
    """(own CPU s, exited children's CPU s, ppid) of a process; zeros if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0, 0
    return (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK, int(fields[1])


def own_cpu(pid: int) -> float:
    """CPU seconds of one process (utime + stime), 0 if it is gone."""
    return _stat(pid)[0]


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and every descendant, live or exited (waited for)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = _stat(int(entry.name))[2]
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        own, exited, _ = _stat(pid)
        total += own + exited
        todo += children.get(pid, [])
    return total


def median(values: list[float]) -> float:
    """Rounded to 3 decimals: a ratio of sub-millisecond medians rounded to 0.1 ms is noise."""
    return round(statistics.median(values), 3) if values else float("nan")


def load_average() -> str:
    """The 1/5/15-minute load, printed with every result: these machines are noisy."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
