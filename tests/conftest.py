"""End-to-end and chaos fixtures: the real embedded stack, started once per session.

Each test gets its own databases (one per cluster, plus its own control database)
and its own migration names, so tests share PostgreSQL, Kafka and Connect but no
state. Teardown removes the test's connectors and slots (slots would otherwise
hold WAL) and drops its databases. The stack stops at the end of the session, by
the pids it recorded.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest

from reshard.config import ClusterConfig, Config
from reshard.kafka.connect_client import ConnectClient
from reshard.stack import Stack
from reshard.stack.stack import PgVersions
from tests import connect_evidence

_counter = itertools.count(1)
# every --json document a command prints in a test is checked against schemas/cli first
os.environ.setdefault("RESHARD_CHECK_JSON_SCHEMAS", "1")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath) or "/chaos/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
        if "/chaos/" in str(item.fspath):
            item.add_marker(pytest.mark.chaos)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that ran on the session's stack gets what Kafka Connect did meanwhile
    (tests/connect_evidence.py): its warnings, task restarts and the tasks' threads."""
    outcome = yield
    rep = outcome.get_result()
    stack = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
    if rep.when == "call" and rep.failed and isinstance(stack, Stack):
        rep.sections.append(("Kafka Connect", connect_evidence.report(stack.home, call.start)))


def _postmaster_alive(datadir: Path) -> bool:
    try:
        os.kill(int((datadir / "postmaster.pid").read_text().split()[0]), 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


@pytest.fixture(scope="session", autouse=True)
def no_data_directory_left_behind(tmp_path_factory):
    """Stacks a test starts under its tmp_path keep their PostgreSQL data outside it when the
    server user cannot reach it (/var/tmp/reshard-pg/<digest>, see stack/postgres.py); pytest
    removes old tmp_paths but not those, ~0.5 GB a stack. After the session, every such
    directory whose servers are stopped goes too."""
    yield
    for link in tmp_path_factory.getbasetemp().rglob("pg"):
        if not link.is_symlink():
            continue
        target = link.resolve()
        if target.is_dir() and not any(_postmaster_alive(d) for d in target.iterdir() if d.is_dir()):
            shutil.rmtree(target, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    """RESHARD_TEST_HOME keeps the stack's data between sessions (faster reruns while
    developing); otherwise the session's stack is deleted after it stops."""
    keep = os.environ.get("RESHARD_TEST_HOME")
    home = Path(keep or tmp_path_factory.mktemp("reshard-stack"))
    st = Stack(home, say=lambda m: print(f"[stack] {m}", flush=True))
    started = time.monotonic()
    try:
        # RESHARD_TEST_PG: the PostgreSQL major of the session's clusters (make test-matrix)
        major = int(os.environ["RESHARD_TEST_PG"]) if os.environ.get("RESHARD_TEST_PG") else None
        st.up(sources=1, targets=2, pg=PgVersions(default=major))
        print(f"[stack] up in {time.monotonic() - started:.1f}s at {home}", flush=True)
        yield st
    finally:
        st.down()
        if not keep:
            st.purge()


def _with_db(dsn: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


@dataclass
class Env:
    name: str
    config: Config

    def dsn(self, cluster: str) -> str:
        return self.config.cluster(cluster).dsn

    def conn(self, cluster: str, **kw) -> psycopg.Connection:
        return psycopg.connect(self.dsn(cluster), autocommit=True, **kw)

    def migration(self, suffix: str = "m") -> str:
        return f"{self.name}{suffix}"[:24]


def _admin_dsn(dsn: str) -> str:
    return _with_db(dsn, "postgres")


@pytest.fixture
def env(stack: Stack) -> Env:
    base = stack.config()
    yield from _env(base, {cname: c.dsn for cname, c in base.clusters.items()})


def _env(base: Config, cluster_dsns: dict[str, str]):
    """An Env of fresh databases on these clusters (and on the stack's control cluster)."""
    name = f"t{os.getpid() % 10000}x{next(_counter)}"
    clusters = {}
    for cname, dsn in cluster_dsns.items():
        with psycopg.connect(_admin_dsn(dsn), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        fresh = _with_db(dsn, name)
        clusters[cname] = ClusterConfig(cname, fresh, fresh)
    with psycopg.connect(_admin_dsn(base.control_dsn), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    config = replace(base, path=None, control_dsn=_with_db(base.control_dsn, name), clusters=clusters)
    yield Env(name, config)
    _cleanup(config, name)


@pytest.fixture(scope="session")
def pg_fleet(stack: Stack, tmp_path_factory):
    """PostgreSQL servers of other majors beside the session's stack, whose Kafka, Connect
    and registry serve them too: ``fleet(source major, target major)`` -> cluster -> DSN
    (source1, target1, target2), started once per pair, stopped at the session's end."""
    from reshard.stack.postgres import PostgresCluster, data_root
    from reshard.stack.process import stop
    from reshard.stack.stack import free_port

    home = tmp_path_factory.mktemp("pg-fleet")
    started, fleets = [], {}

    def fleet(source: int, target: int) -> dict[str, str]:
        if (source, target) not in fleets:
            dsns = {}
            for role, major in (("source1", source), ("target1", target), ("target2", target)):
                name = f"{role}-pg{source}-pg{target}"
                c = PostgresCluster(name, data_root(home) / name, free_port(), home / f"{name}.log", major=major)
                c.init()
                rec = c.start()
                started.append(rec)
                c.wait_ready(rec)
                dsns[role] = c.dsn()
            fleets[(source, target)] = dsns
        return fleets[(source, target)]

    yield fleet
    for rec in started:
        stop(rec)


@pytest.fixture
def versioned_env(request, stack: Stack, pg_fleet) -> Env:
    """``env`` on a fleet of other PostgreSQL majors: parametrize with (source, target) majors."""
    source, target = request.param
    yield from _env(stack.config(), pg_fleet(source, target))


def _cleanup(config: Config, name: str) -> None:
    client = ConnectClient(config.connect)
    for connector in client.connectors():
        if connector.startswith(f"reshard-{name}"):
            client.delete(connector)
    for c in config.clusters.values():
        with psycopg.connect(_admin_dsn(c.dsn), autocommit=True) as conn:
            for _ in range(100):
                rows = conn.execute(
                    "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s", (name,)
                ).fetchall()
                if not any(active for _s, active in rows):
                    break
                time.sleep(0.1)
            for slot, _active in rows:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            # replication origins are cluster-wide and outlive the database: without this a
            # long session exhausts max_replication_slots (origin progress uses those slots)
            for (origin,) in conn.execute("SELECT roname FROM pg_replication_origin WHERE roname LIKE %s "
                                          "OR roname LIKE %s", (f"reshard_fwd_{name}%", f"reshard_rev_{name}%")).fetchall():
                conn.execute("SELECT pg_replication_origin_drop(%s)", (origin,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    with psycopg.connect(_admin_dsn(config.control_dsn), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
