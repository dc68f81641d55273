"""A source that fails over mid-migration, under a write load through the router.

The source is a primary and its physical standby (reshard/stack/standby.py); reshard's
config lists both (``host=a,b ... target_session_attrs=read-write``). The old primary
stops (a clean stop: it sends all its WAL to the standby first), the standby is promoted,
and the load goes on against it.

- 17 and 18: the slot is a failover slot the standby synchronized. The applier's failover watch
  sees the new timeline, judges the slot carried and re-points the Debezium connector;
  ``wait`` proves catch-up, verify is EQUAL, every acknowledged write is on its owner, and a
  cutover and complete run against the new primary.
- 15 and 16: the slot stayed on the old primary. The loss is seen at once: the stream is marked lost
  (status, the exporter's metric), the connector paused, and ``wait`` and ``cutover`` exit 16.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import psycopg
import pytest

from reshard.cluster.failover import Lineage
from reshard.control.states import State
from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover, rollback
from reshard.errors import StreamLost
from reshard.exit_codes import ExitCode
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import forward
from reshard.snapshotter.throttle import ThrottleSettings
from reshard.stack import standby as standbys
from reshard.stack.postgres import PostgresCluster, data_root
from reshard.stack.process import stop
from reshard.stack.stack import free_port
from tests.conftest import _env
from tests.e2e.cutover_helpers import RouterLoad, assert_acked_on_owners, setup
from tests.e2e.helpers import ApplierThread, assert_verified, reshard_cmd, wait_for, write_config_file


@pytest.fixture
def failover_env(request, stack, tmp_path):
    """source1 = a primary and its standby (one DSN listing both), two targets; all of one major."""
    major = request.param
    root = data_root(tmp_path)
    servers = {role: PostgresCluster(f"{role}-pg{major}", root / role, free_port(), tmp_path / f"{role}.log",
                                     major=major)
               for role in ("primary", "target1", "target2")}
    replica = PostgresCluster(f"standby-pg{major}", root / "standby", free_port(), tmp_path / "standby.log",
                              major=major)
    recs = {}
    try:
        for role, c in servers.items():
            c.init()
            recs[role] = c.start()
            c.wait_ready(recs[role])
        recs["standby"] = standbys.create(servers["primary"], replica)
        p, s = servers["primary"], replica
        source = (f"host=127.0.0.1,127.0.0.1 port={p.port},{s.port} user=postgres dbname=postgres "
                  "target_session_attrs=read-write")
        dsns = {"source1": source, "target1": servers["target1"].dsn(), "target2": servers["target2"].dsn()}
        for env in _env(stack.config(), dsns):
            yield major, env, servers["primary"], replica, recs
    finally:
        for rec in recs.values():
            stop(rec)


def _standby_view(co, name: str) -> dict:
    (view,) = co.status(name)["standbys"]
    return view


def _fail_over(primary_rec, replica: PostgresCluster) -> None:
    """The old primary stops (a fast shutdown: sessions are cut, and its WAL goes to the standby
    before it exits); the standby is promoted."""
    stop(primary_rec, signal.SIGINT)
    with psycopg.connect(replica.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_promote(true, 60)").fetchone()[0]


def _lineage(co, name: str, slot: str) -> str | None:
    row = co.store.slot_origins(name).get(slot)
    return row["lineage"] if row else None


@pytest.mark.parametrize("failover_env", [17, 18], indirect=True, ids=["pg17", "pg18"])
def test_a_source_failover_mid_stream_is_followed_with_nothing_lost(failover_env, tmp_path):
    major, env, primary, replica, recs = failover_env
    co, name = setup(env, rows=3_000)
    co.start(name)
    stream = forward(name, "source1")
    client = ConnectClient(env.config.connect)
    assert client.config(stream.connector)["database.port"] == str(primary.port)
    with ApplierThread(co, name):
        load = RouterLoad(env.config, threads=2, rate=150, seed=22).start()
        try:
            co.wait(name, timeout=90)
            assert _standby_view(co, name)["missing"] == []
            # the applier's watch helps the sync along (a standby snapshot record on the primary)
            wait_for(lambda: _standby_view(co, name)["synced"] == {stream.slot: True}, 90,
                     "the standby to synchronize the failover slot", interval=1.0)
            acked_before = load.stats.writes
            _fail_over(recs["primary"], replica)
            promoted = time.monotonic()
            wait_for(lambda: _lineage(co, name, stream.slot) == Lineage.CARRIED, 60, "the watch to follow the slot")
            wait_for(lambda: client.config(stream.connector)["database.port"] == str(replica.port), 30,
                     "the connector to be re-pointed at the new primary")
            repointed_s = time.monotonic() - promoted
            wait_for(lambda: load.stats.writes > acked_before + 300, 60, "writes on the new primary")
            co.wait(name, timeout=120)
            assert_verified(co.verify(name))
        finally:
            stats = load.stop()
        co.wait(name, timeout=90)
        assert_verified(co.verify(name))
        status = co.status(name)
        (fwd,) = [s for s in status["streams"] if s["direction"] == "fwd"]
        assert fwd["slot_lineage"]["lineage"] == Lineage.CARRIED and fwd["slot_lineage"]["timeline"] == 2, fwd
        assert fwd["state"] == "RUNNING"
        assert any(e["event"] == "stream.repointed" for e in co.store.recent_events(name, 50))
        # the cutover and complete run against the new primary
        result = cutover(env.config, co.store, name, SwitchOptions())
        assert result.outcome == Outcome.DONE, result.message
    assert stats.rejected == 0, stats
    assert assert_acked_on_owners(env, load.acked, co) > 300
    co.complete(name, keep_source_data=False)
    assert co.store.migration(name).state == State.COMPLETE
    print(f"PostgreSQL {major} failover: connector re-pointed {repointed_s:.1f}s after the promotion; "
          f"{stats.writes} writes acknowledged, {sum(stats.failed.values())} failed while the primary moved; "
          f"cutover write pause {result.pause_ms:.0f} ms")


@pytest.mark.parametrize("failover_env", [17], indirect=True, ids=["pg17"])
def test_a_source_failover_during_the_copy_is_resumed_on_the_new_primary(failover_env):
    _major, env, primary, replica, recs = failover_env
    co, name = setup(env, rows=40_000)
    stream = forward(name, "source1")
    copying: dict = {}

    def copy() -> None:
        try:
            copying["report"] = co.start(name, batch_rows=500, throttle=ThrottleSettings(max_rows_per_s=1000))
        except Exception as exc:  # the old primary goes away under it
            copying["error"] = exc
    load = RouterLoad(env.config, threads=2, rate=100, seed=23).start()
    try:
        first = threading.Thread(target=copy, daemon=True)
        first.start()
        wait_for(lambda: _lineage(co, name, stream.slot) is not None, 60, "the copy's slot")
        # start's own watch helps the standby synchronize the new slot while the copy runs
        wait_for(lambda: _standby_view(co, name)["synced"] == {stream.slot: True}, 60,
                 "the standby to synchronize the failover slot", interval=1.0)
        assert first.is_alive(), "the copy ended before the failover: make it longer"
        _fail_over(recs["primary"], replica)
        first.join(timeout=120)
        assert "error" in copying, copying  # the copy's snapshot was on the old primary
        report = co.start(name, batch_rows=2_000)  # the rerun resumes on the new primary
        assert report.resumed and report.units_already_done + 1 >= 1
        assert _lineage(co, name, stream.slot) == Lineage.CARRIED
        assert ConnectClient(env.config.connect).config(stream.connector)["database.port"] == str(replica.port)
        with ApplierThread(co, name):
            co.wait(name, timeout=120)
            load_stats = load.stop()
            co.wait(name, timeout=90)
            assert_verified(co.verify(name))
    finally:
        load.stop()
    assert load_stats.writes > 0 and load_stats.rejected == 0
    print(f"PostgreSQL 17 failover during the copy: resumed, {load_stats.writes} writes acknowledged, "
          f"{sum(load_stats.failed.values())} failed while the primary moved")


@pytest.mark.parametrize("failover_env", [17], indirect=True, ids=["pg17"])
def test_a_source_failover_between_cutover_and_complete_keeps_rollback_and_loses_nothing(failover_env):
    _major, env, primary, replica, recs = failover_env
    co, name = setup(env, rows=3_000)
    co.start(name)
    stream = forward(name, "source1")
    with ApplierThread(co, name):
        load = RouterLoad(env.config, threads=2, rate=150, seed=24).start()
        try:
            co.wait(name, timeout=90)
            assert_verified(co.verify(name))
            result = cutover(env.config, co.store, name, SwitchOptions())
            assert result.outcome == Outcome.DONE, result.message
            wait_for(lambda: _standby_view(co, name)["synced"] == {stream.slot: True}, 90,
                     "the standby to synchronize the failover slot", interval=1.0)
            # the targets own the moving keys now; their writes flow back to the source, which fails over
            _fail_over(recs["primary"], replica)
            wait_for(lambda: _lineage(co, name, stream.slot) == Lineage.CARRIED, 60, "the watch to follow the slot")
            acked = load.stats.writes
            wait_for(lambda: load.stats.writes > acked + 300, 60, "writes after the failover")
            co.wait(name, timeout=120)  # forward and reverse streams, the reverse ones applied to the new primary
            assert_verified(co.verify(name))
            back = rollback(env.config, co.store, name, SwitchOptions())  # the source takes the keys back
            assert back.outcome == Outcome.DONE, back.message
            time.sleep(1.5)
            co.wait(name, timeout=90)
        finally:
            stats = load.stop()
        co.wait(name, timeout=90)
        assert_verified(co.verify(name))
    assert stats.rejected == 0, stats
    assert assert_acked_on_owners(env, load.acked, co) > 300


@pytest.mark.parametrize("failover_env", [15, 16], indirect=True, ids=["pg15", "pg16"])
def test_before_17_a_source_failover_is_detected_and_nothing_claims_catch_up(failover_env, tmp_path):
    major, env, primary, replica, recs = failover_env
    co, name = setup(env, rows=2_000)
    co.start(name)
    assert any(f"PostgreSQL {major} has no slot synchronization" in m for m in _standby_view(co, name)["missing"])
    stream = forward(name, "source1")
    cfg = write_config_file(env, tmp_path)
    with ApplierThread(co, name):
        load = RouterLoad(env.config, threads=2, rate=100, seed=16).start()
        try:
            co.wait(name, timeout=90)
            _fail_over(recs["primary"], replica)
            started = time.monotonic()
            wait_for(lambda: _lineage(co, name, stream.slot) == Lineage.LOST, 60, "the watch to see the slot lost")
            seen_s = time.monotonic() - started
        finally:
            stats = load.stop()
        with pytest.raises(StreamLost, match=f"lost its position .*PostgreSQL {major} keeps a logical slot on its primary"):
            co.wait(name, timeout=30)
        wait = subprocess.run(reshard_cmd(cfg, "wait", name, "--timeout", "20"), capture_output=True, text=True,
                              timeout=120)
        assert wait.returncode == ExitCode.STREAM_LOST, wait
        cut = subprocess.run(reshard_cmd(cfg, "cutover", name, "--skip-verify-gate"), capture_output=True, text=True,
                             timeout=120)
        assert cut.returncode == ExitCode.STREAM_LOST and "lost its slot" in cut.stdout + cut.stderr, cut
    status = co.status(name)
    (fwd,) = [s for s in status["streams"] if s["direction"] == "fwd"]
    assert fwd["slot_lineage"]["lineage"] == Lineage.LOST and f"PostgreSQL {major}" in fwd["slot_lineage"]["why"]
    assert fwd["state"] == "PAUSED" and "lost its position" in status["error"]
    shown = subprocess.run(reshard_cmd(cfg, "status", name), capture_output=True, text=True, timeout=60)
    assert "SLOT LOST" in shown.stdout, shown
    assert stats.writes > 0
    print(f"PostgreSQL {major} failover: the lost slot was seen {seen_s:.1f}s after the promotion")
