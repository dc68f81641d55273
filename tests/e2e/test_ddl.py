"""Schema changes during a migration, on the real stack under write load: captured where they
are made, placed on every destination at the right point, both directions."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import threading
import time
from dataclasses import replace

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from reshard.config import ClusterConfig
from reshard.coordinator import Coordinator
from reshard.ddl import capture
from reshard.exit_codes import ExitCode
from reshard.maps import keyhash
from reshard.maps.shardmap import parse_map
from reshard.stack.stack import free_port
from reshard.stack.workload import Workload
from tests.conftest import Env
from tests.e2e.helpers import (
    ApplierThread,
    assert_targets_equal_source,
    assert_verified,
    at_failpoint,
    prepare,
    reshard_cmd,
    spawn,
    wait_for,
    write_config_file,
)

TABLE = "public.accounts"


def shape_of(env, cluster: str, table: str = TABLE) -> dict:
    """What must agree across clusters: column names, types, NOT NULL and defaults in order of
    name (attnums differ once columns came and went), indexes and constraints by name."""
    with env.conn(cluster) as conn:
        s = capture.shape(conn, table)
    return {"columns": sorted((c["name"], c["type"], c["notnull"], c["default"]) for c in s["columns"]),
            "indexes": sorted(i["name"] for i in s["indexes"]),
            "constraints": sorted((k["name"], k["def"].replace(" NOT VALID", "")) for k in s["constraints"])}


def ddl_settled(co, name: str) -> bool:
    """Every captured change placed everywhere (or, for the test's asserts, failed loudly)."""
    changes = co.store.ddl_changes(name)
    paused = [c for c in changes if c["status"] == "paused"]
    assert not paused, paused
    return bool(changes) and all(c["status"] == "applied" for c in changes)


def run_ddl(env, cluster: str, *statements: str, gap_s: float = 1.0) -> None:
    with env.conn(cluster) as conn:
        for s in statements:
            conn.execute(s)
            time.sleep(gap_s)


def test_a_split_under_load_places_each_kind_of_change_at_its_point(env):
    name = env.migration()
    co = prepare(env, rows=5_000, migration=name)
    load = Workload(env.dsn("source1"), rate=200, max_seconds=180, seed=7)
    load.start()
    try:
        co.start(name, batch_rows=2000)
        with ApplierThread(co, name):
            time.sleep(2.0)
            run_ddl(env, "source1",
                    "ALTER TABLE public.accounts ADD COLUMN memo text DEFAULT 'none'",
                    "UPDATE public.accounts SET memo = 'm-' || id WHERE id % 7 = 0",
                    "CREATE INDEX accounts_owner_idx ON public.accounts (owner)",
                    "ALTER TABLE public.accounts ADD COLUMN score integer",
                    "UPDATE public.accounts SET score = id % 1000 WHERE id % 5 = 0",
                    "ALTER TABLE public.accounts ALTER COLUMN score TYPE bigint",
                    "UPDATE public.accounts SET score = score * 100000000 WHERE id % 10 = 0",
                    "ALTER TABLE public.accounts RENAME COLUMN memo TO remark",
                    "UPDATE public.accounts SET remark = 'r-' || id WHERE id % 11 = 0",
                    "ALTER TABLE public.accounts ADD COLUMN gone integer DEFAULT 1",
                    "ALTER TABLE public.accounts DROP COLUMN gone",
                    "ALTER TABLE public.accounts ADD CONSTRAINT score_known CHECK (score IS NULL OR score >= 0)")
            time.sleep(2.0)
            stats = load.stop()
            co.wait(name, timeout=120)
            wait_for(lambda: ddl_settled(co, name), 120, "every schema change placed")
            co.wait(name, timeout=120)
    finally:
        load.stop()
    assert stats.errors == 0, stats.last_error
    want = shape_of(env, "source1")
    assert ("remark", "text", False, "'none'::text") in want["columns"] and "accounts_owner_idx" in want["indexes"]
    for t in ("target1", "target2"):
        assert shape_of(env, t) == want, t
    assert_targets_equal_source(env)
    assert_verified(co.verify(name))
    applied = co.store.ddl_applied(name)
    # each op once per destination, with the source position it was applied at
    assert len(applied) == len({(a["destination"], a["statement"]) for a in applied})
    assert {a["destination"] for a in applied} == {"target1", "target2"}
    assert all(set(a["positions"]) == {"source1"} for a in applied)
    assert co.store.last_event(name, "ddl.applied") is not None


# ---- two sources -> three targets ------------------------------------------------------------
B = 4096
Q = B // 6
GROUP = {"key": "bigint", "tables": {TABLE: "id"}}
TWO = {"name": "two", "groups": {"accounts": {**GROUP, "hash": {"buckets": B, "clusters": {
    "source1": f"0-{3 * Q - 1}", "source2": f"{3 * Q}-{B - 1}"}}}}}
# every target takes keys of both sources: each one's barrier waits for both streams
THREE = {"name": "three", "groups": {"accounts": {**GROUP, "hash": {"buckets": B, "clusters": {
    "target1": f"0-{Q - 1},{3 * Q}-{4 * Q - 1}", "target2": f"{Q}-{2 * Q - 1},{4 * Q}-{5 * Q - 1}",
    "target3": f"{2 * Q}-{3 * Q - 1},{5 * Q}-{B - 1}"}}}}}
LEGACY = "CREATE TABLE public.accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(14,2) NOT NULL, " \
         "score integer, legacy text NOT NULL)"


def owner_of(key: int) -> str:
    b = keyhash.bucket([key], ["bigint"], B)
    return "source1" if b < 3 * Q else "source2"


@pytest.fixture
def two_to_three(env):
    """env with source2 (a database of its own on source1's server) and target3 (on target2's)."""
    extra = {"source2": "source1", "target3": "target2"}
    clusters = dict(env.config.clusters)
    for name, on in extra.items():
        db = f"{env.name}_{name}"
        with psycopg.connect(make_conninfo(env.dsn(on), dbname="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{db}"')
        dsn = make_conninfo(env.dsn(on), dbname=db)
        clusters[name] = ClusterConfig(name, dsn, dsn)
    two = Env(env.name, replace(env.config, clusters=clusters))
    yield two
    for name, on in extra.items():
        with psycopg.connect(make_conninfo(env.dsn(on), dbname="postgres"), autocommit=True) as conn:
            for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                        (f"{env.name}_{name}",)).fetchall():
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


class Writers:
    """Updates and inserts on each source's own keys, ~40/s each, until stopped; it writes only
    columns every shape has, and records errors (there must be none)."""

    def __init__(self, env, keys: dict[str, list[int]]):
        self.env, self.keys = env, keys
        self.stop_ = threading.Event()
        self.errors: list[str] = []
        self.writes = 0
        self.next = {s: max(k) + 1 for s, k in keys.items()}
        self.threads = [threading.Thread(target=self._run, args=(s,), daemon=True) for s in keys]

    def _run(self, source: str) -> None:
        rng = random.Random(source)
        with self.env.conn(source) as conn:
            while not self.stop_.is_set():
                try:
                    if rng.random() < 0.8:
                        conn.execute("UPDATE public.accounts SET balance = balance + 1, score = %s WHERE id = %s",
                                     (rng.randrange(1000), rng.choice(self.keys[source])))
                    else:
                        k = self.next[source]
                        while owner_of(k) != source:
                            k += 1
                        self.next[source] = k + 1
                        has_legacy = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = "
                                                  "'accounts' AND column_name = 'legacy'").fetchone()
                        if has_legacy:
                            conn.execute("INSERT INTO public.accounts (id, owner, balance, legacy) "
                                         "VALUES (%s, 'w', 0, 'l')", (k,))
                        else:
                            conn.execute("INSERT INTO public.accounts (id, owner, balance) VALUES (%s, 'w', 0)", (k,))
                    self.writes += 1
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                time.sleep(0.025)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_.set()
        for t in self.threads:
            t.join(timeout=30)


def test_two_sources_to_three_targets_destructive_changes_wait_for_both(two_to_three):
    env = two_to_three
    keys: dict[str, list[int]] = {"source1": [], "source2": []}
    for k in range(1, 3001):
        keys[owner_of(k)].append(k)
    for c in ("source1", "source2", "target1", "target2", "target3"):
        with env.conn(c) as conn:
            conn.execute(LEGACY)
    for s, ks in keys.items():
        with env.conn(s) as conn:
            conn.execute("INSERT INTO public.accounts SELECT k, 'o-' || k, k, k %% 100, 'l' FROM unnest(%s::bigint[]) k",
                         (ks,))
    co = Coordinator.open(env.config)
    name = env.migration()
    co.create(name, parse_map(THREE, env.config.clusters), parse_map(TWO, env.config.clusters))
    co.start(name)
    with Writers(env, keys) as writers, ApplierThread(co, name) as applier:
        time.sleep(2.0)
        for s in ("source1", "source2"):  # the same changes, on one source, then the other, writes between
            run_ddl(env, s,
                    "ALTER TABLE public.accounts ADD COLUMN memo text DEFAULT 'none'",
                    "CREATE INDEX accounts_owner_idx ON public.accounts (owner)",
                    "ALTER TABLE public.accounts ALTER COLUMN score TYPE bigint",
                    "UPDATE public.accounts SET score = 5000000000 + id WHERE id % 9 = 0",
                    "ALTER TABLE public.accounts RENAME COLUMN memo TO remark",
                    "UPDATE public.accounts SET remark = 'r-' || id WHERE id % 4 = 0",
                    "ALTER TABLE public.accounts DROP COLUMN legacy", gap_s=0.5)
            if s == "source1":
                # source2 has not dropped legacy nor renamed memo: every target keeps both, and rows
                # of both shapes keep coming (source1's without legacy, with remark)
                time.sleep(20.0)
                ddl = co.status(name)["ddl"]
                waits = {(p["what"], w["destination"]): w["waits_for"] for p in ddl["pending"] for w in p["pending_on"]}
                for t in ("target1", "target2", "target3"):
                    assert waits[("drop column legacy", t)] == ["source2"], waits
                    assert waits[("rename column memo to remark", t)] == ["source2"], waits
                    cols = {c[0] for c in shape_of(env, t)["columns"]}
                    assert {"legacy", "memo"} <= cols and "remark" not in cols, (t, cols)
                    assert ("memo", "text", False, "'none'::text") in shape_of(env, t)["columns"]
                assert "accounts_owner_idx" in shape_of(env, "target1")["indexes"]  # additive: at once
                assert ddl["waiting_at_barrier"] == {"target1": 2, "target2": 2, "target3": 2}, ddl
        time.sleep(2.0)
        writers.__exit__()
        co.wait(name, timeout=120)
        wait_for(lambda: ddl_settled(co, name), 120, "every schema change placed")
        co.wait(name, timeout=120)
        assert not writers.errors, writers.errors[:3]
    assert applier.result["stats"].dead_letters == 0  # no row from either source was rejected
    want = shape_of(env, "source1")
    assert shape_of(env, "source2") == want
    assert {c[0] for c in want["columns"]} == {"id", "owner", "balance", "score", "remark"}
    for t in ("target1", "target2", "target3"):
        assert shape_of(env, t) == want, t
    assert_verified(co.verify(name))
    # the destructive ones were applied at both sources' positions
    drops = [a for a in co.store.ddl_applied(name) if "DROP COLUMN" in a["statement"]]
    assert len(drops) == 3 and all(set(a["positions"]) == {"source1", "source2"} for a in drops)


# ---- what reshard will not place, a crash between destinations, the reverse direction ---------

def test_an_unsupported_change_pauses_with_its_reason_and_resumes_after_the_documented_fix(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=2_000, migration=name)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
    with env.conn("source1") as conn:
        conn.execute("UPDATE public.accounts SET balance = 1 WHERE id <= 50")
        conn.execute("ALTER TABLE public.accounts ADD CONSTRAINT accounts_owner_key UNIQUE (owner)")
        conn.execute("UPDATE public.accounts SET balance = 2 WHERE id BETWEEN 40 AND 90")  # after it: kept for later
    proc = subprocess.run(reshard_cmd(cfg, "apply", name), capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.PAUSED, proc.stderr
    assert "schema change on source1 at" in proc.stderr and "UNIQUE (owner)" in proc.stderr, proc.stderr
    assert f"reshard ddl resolve {name} source1" in proc.stderr, proc.stderr
    status = json.loads(subprocess.run(reshard_cmd(cfg, "status", name, "--json"), capture_output=True, text=True,
                                       timeout=60).stdout)
    paused = status["ddl"]["paused"]
    assert len(paused) == 1 and paused[0]["cluster"] == "source1" and "only CHECK" in paused[0]["reason"], paused
    assert co.store.last_event(name, "ddl.paused") is not None
    # a worker under a supervisor that restarts whatever the exit code stays up instead, says why
    # once, applies nothing past the change, and goes on by itself after the fix
    port = free_port()
    log = tmp_path / "apply-wait.log"
    waiting = spawn(cfg, log, "apply", name, "--on-pause", "wait", "--pause-recheck", "2s",
                    "--metrics-port", str(port))
    try:
        wait_for(lambda: "--on-pause wait: trying again every 2s" in log.read_text(errors="replace")
                 or waiting.poll() is not None, 90, "the waiting worker to pause")
        time.sleep(5.0)  # two more tries
        assert waiting.poll() is None, log.read_text()
        assert log.read_text().count("--on-pause wait: trying again") == 1, log.read_text()
        assert scrape(port, "reshard_applier_paused", name) == 1.0
        # the documented way on: the same change by hand on each destination, resolve
        for t in ("target1", "target2"):
            with env.conn(t) as conn:
                conn.execute("ALTER TABLE public.accounts ADD CONSTRAINT accounts_owner_key UNIQUE (owner)")
        listed = json.loads(subprocess.run(reshard_cmd(cfg, "ddl", "list", name, "--json"), capture_output=True,
                                           text=True, timeout=60).stdout)
        entry = listed["changes"][0]["entry"]
        done = subprocess.run(reshard_cmd(cfg, "ddl", "resolve", name, "source1", str(entry), "--json"),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        co.wait(name, timeout=120)  # the waiting worker applied the rest
        wait_for(lambda: scrape(port, "reshard_applier_paused", name) == 0.0, 30, "the paused gauge cleared")
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=60) == 0, log.read_text()
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert_targets_equal_source(env)
    assert_verified(co.verify(name))
    for t in ("target1", "target2"):
        assert shape_of(env, t) == shape_of(env, "source1")


def scrape(port: int, metric: str, migration: str) -> float | None:
    """One sample of a worker's metric for the migration, read from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and sample.labels.get("migration") == migration:
                return sample.value
    return None


def test_a_kill_between_two_destinations_applies_the_change_once_on_each(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=1_000, migration=name)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    with env.conn("source1") as conn:
        conn.execute("ALTER TABLE public.accounts ADD COLUMN region text DEFAULT 'eu'")
        conn.execute("UPDATE public.accounts SET region = 'us' WHERE id % 3 = 0")
    log = tmp_path / "apply.log"
    proc = spawn(cfg, log, "apply", name, failpoint="ddl_apply:applied")
    try:
        at_failpoint(proc, log, "ddl_apply:applied")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # killed after the first destination took the change, before it was recorded
    have = {t: "region" in {c[0] for c in shape_of(env, t)["columns"]} for t in ("target1", "target2")}
    assert have == {"target1": True, "target2": False}, have
    assert not co.store.ddl_applied(name)
    again = subprocess.run(reshard_cmd(cfg, "apply", name, "--until-caught-up", "--timeout", "120"),
                           capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    wait_for(lambda: ddl_settled(co, name), 30, "the change placed")
    applied = co.store.ddl_applied(name)
    assert sorted(a["destination"] for a in applied) == ["target1", "target2"]
    events = [e for e in co.store.recent_events(name, 100) if e["event"] == "ddl.applied"]
    assert sorted(e["detail"]["destination"] for e in events) == ["target1", "target2"]
    assert_targets_equal_source(env)
    for t in ("target1", "target2"):
        assert shape_of(env, t) == shape_of(env, "source1")


def test_a_column_added_on_a_new_owner_reaches_the_source_before_a_rollback(env):
    from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover, rollback
    from tests.e2e.cutover_helpers import setup

    co, name = setup(env, audit=False)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        first = cutover(env.config, co.store, name, SwitchOptions())
        assert first.outcome == Outcome.DONE, first.message
        with env.conn("target1") as conn:
            conn.execute("ALTER TABLE public.accounts ADD COLUMN region text")
            mine = [k for (k,) in conn.execute("SELECT id FROM public.accounts ORDER BY id LIMIT 200").fetchall()]
            conn.execute("UPDATE public.accounts SET region = 'r-' || id WHERE id = ANY(%s)", (mine,))
            # and a change no row follows, just before the rollback: the rollback places it itself
            conn.execute("CREATE INDEX accounts_region_idx ON public.accounts (region)")
        back = rollback(env.config, co.store, name, SwitchOptions())
        assert back.outcome == Outcome.DONE, back.message
        co.wait(name, timeout=60)
    with env.conn("source1") as conn:
        got = dict(conn.execute("SELECT id, region FROM public.accounts WHERE id = ANY(%s)", (mine,)).fetchall())
    assert got == {k: f"r-{k}" for k in mine}
    assert "accounts_region_idx" in shape_of(env, "source1")["indexes"]
    placed = co.store.ddl_applied(name)
    assert [(a["direction"], a["destination"]) for a in placed] == [("rev", "source1")] * 2, placed
    assert all(set(a["positions"]) == {"target1"} for a in placed)
