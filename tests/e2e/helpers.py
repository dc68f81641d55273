"""Helpers for end-to-end tests: set up the sample table, compare rows exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from confluent_kafka.schema_registry import SchemaRegistryClient

from reshard.config import write_config
from reshard.coordinator import Coordinator
from reshard.failpoints import FAILPOINT_ENV
from reshard.maps.shardmap import parse_map
from reshard.stack.demo import demo_maps
from reshard.stack.workload import TABLE, create_table, seed

TARGETS = ["target1", "target2"]

# A stock client's requests get a deadline: confluent-kafka's SchemaRegistryClient has none by
# default, and once (CI of 2026-12-06, twice in one run) a 404 the registry logged as answered
# never reached it, so it waited for the registry's 30-minute idle timeout before retrying.
# With a deadline it retries the request within seconds (up to its `max.retries`).
STOCK_CLIENT_TIMEOUT_S = 10


def stock_registry_client(url: str) -> SchemaRegistryClient:
    """confluent-kafka's own registry client, as a downstream team would configure it."""
    return SchemaRegistryClient({"url": url, "timeout": STOCK_CLIENT_TIMEOUT_S})


def prepare(env, rows: int, migration: str) -> Coordinator:
    """Sample table seeded on source1, empty on the targets, migration created (split by hash)."""
    with env.conn("source1") as conn:
        create_table(conn)
        seed(conn, rows)
    for t in TARGETS:
        with env.conn(t) as conn:
            create_table(conn)
    co = Coordinator.open(env.config)
    before, after = demo_maps(TARGETS)
    co.create(migration, parse_map(after, env.config.clusters), parse_map(before, env.config.clusters))
    return co


def all_rows(dsn: str, table: str = TABLE) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def assert_targets_equal_source(env, table: str = TABLE) -> int:
    """Row for row: the source table equals the union of the targets' tables."""
    src = all_rows(env.dsn("source1"), table)
    union = sorted((r for t in TARGETS for r in all_rows(env.dsn(t), table)), key=lambda r: r[0])
    ids = [r[0] for r in union]
    assert len(ids) == len(set(ids)), "a key is on more than one target"
    if src != union:
        s, u = {r[0]: r for r in src}, {r[0]: r for r in union}
        missing = sorted(s.keys() - u.keys())[:10]
        extra = sorted(u.keys() - s.keys())[:10]
        differ = [k for k in sorted(s.keys() & u.keys()) if s[k] != u[k]][:10]
        raise AssertionError(f"targets differ from source: missing {missing}, extra {extra}, different {differ}")
    return len(src)


class ApplierThread:
    """An in-process applier (the same code `reshard apply` runs), stoppable."""

    def __init__(self, co: Coordinator, migration: str):
        self.stop = threading.Event()
        self.result: dict = {}
        self.thread = threading.Thread(target=self._run, args=(co, migration), daemon=True)

    def _run(self, co, migration):
        try:
            self.result["stats"] = co.apply(migration, self.stop)
        except BaseException as exc:
            self.result["error"] = exc

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=60)
        if "error" in self.result:
            raise self.result["error"]


def write_config_file(env, tmp_path: Path) -> Path:
    path = tmp_path / "reshard.yaml"
    write_config(env.config, path)
    return path


def reshard_cmd(config_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "reshard.cli", "--config", str(config_path), "--progress", "plain", *args]


def spawn(config_path: Path, log: Path, *args: str, failpoint: str | None = None) -> subprocess.Popen:
    """``reshard <args>`` in the background; with ``failpoint``, stalled there (see
    reshard/failpoints.py) until the test kills it (wait with ``at_failpoint``)."""
    env = {**os.environ, FAILPOINT_ENV: failpoint} if failpoint else None
    return subprocess.Popen(reshard_cmd(config_path, *args), stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)


def at_failpoint(proc: subprocess.Popen, log: Path, point: str, timeout: float = 120) -> None:
    """Wait until the process spawned with ``failpoint=point`` stalls there."""
    wait_for(lambda: f"failpoint {point} reached" in log.read_text(errors="replace") or proc.poll() is not None,
             timeout, f"failpoint {point}")
    assert proc.poll() is None, f"exited ({proc.returncode}) before failpoint {point}:\n{log.read_text()}"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def applied_count(env, migration: str) -> int:
    total = 0
    for t in TARGETS:
        with env.conn(t) as conn:
            if conn.execute("SELECT to_regclass('reshard.applied_rows')").fetchone()[0]:
                total += conn.execute("SELECT count(*) FROM reshard.applied_rows WHERE migration = %s",
                                      (migration,)).fetchone()[0]
    return total


def assert_verified(report) -> None:
    """Fail with every check's figures and differences spelled out (not a truncated repr)."""
    if report.equal:
        return
    lines = []
    for c in report.checks:
        lines.append(f"{c.move} {c.table}: source {c.source_rows} rows, target {c.target_rows} rows, "
                     f"checksums {'equal' if c.source_checksum == c.target_checksum else 'differ'}, "
                     f"misplaced {c.misplaced_rows}, rechecked {c.rechecked}, equal {c.equal}")
        lines += [f"    {d}" for d in c.differences]
    raise AssertionError("verification found differences:\n" + "\n".join(lines))
