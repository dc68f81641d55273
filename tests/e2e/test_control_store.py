"""The control store's unit of work, on a real control database: what runs in one unit
commits together or not at all, its audit rows included, and a pinned store's unit is
its connection's transaction. A per-thread store keeps one session per thread and
replaces one the server ended."""

import threading
import time

import psycopg
import pytest

from reshard.control.store import ControlStore
from reshard.control.switch import StepRecord
from reshard.errors import Unavailable
from reshard.maps.planner import plan
from reshard.maps.shardmap import parse_map


def _map(env, split: bool):
    names = sorted(env.config.clusters)
    clusters = {names[0]: "0-4095"} if not split else {names[1]: "0-2047", names[2]: "2048-4095"}
    return parse_map({"name": "accounts", "groups": {"g": {"key": "bigint", "tables": {"public.accounts": "id"},
                                                           "hash": {"buckets": 4096, "clusters": clusters}}}},
                     env.config.clusters)


def _audit(env, event: str) -> int:
    with psycopg.connect(env.config.control_dsn) as conn:
        return conn.execute("SELECT count(*) FROM reshard.audit_log WHERE event = %s", (event,)).fetchone()[0]


@pytest.mark.e2e
@pytest.mark.parametrize("pinned", [False, True, "per_thread"], ids=["own", "pinned", "per_thread"])
def test_a_unit_of_work_commits_together_or_not_at_all(env, pinned):
    store = ControlStore(env.config.control_dsn)
    first, _ = store.register_map(_map(env, split=False))
    second, _ = store.register_map(_map(env, split=True))
    store.activate(first)

    def run(s: ControlStore) -> None:
        with pytest.raises(RuntimeError), s.unit() as uow:
            uow.activate(second)
            uow.record_event(None, "test.inside")
            assert uow.active_epoch() == second  # the unit sees its own writes
            raise RuntimeError("the unit fails after its writes")
        assert s.active_epoch() == first and _audit(env, "test.inside") == 0  # all rolled back
        with s.unit() as uow:
            uow.activate(second)
            uow.record_event(None, "test.inside")
            with psycopg.connect(env.config.control_dsn) as other:  # nothing is visible before the end
                assert other.execute("SELECT epoch FROM reshard.active_map").fetchone()[0] == first
        assert s.active_epoch() == second and _audit(env, "test.inside") == 1

    if pinned == "per_thread":
        t = store.per_thread()
        run(t)
        t.activate(first)  # the thread's session commits calls outside a unit
        assert store.active_epoch() == first
        t.close()
    elif pinned:
        with store.pinned() as p:
            run(p)
            p.activate(first)  # the pinned connection still commits calls outside a unit
        assert store.active_epoch() == first
    else:
        run(store)


def _backend(store: ControlStore) -> int:
    with store.connect() as conn:
        return conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]


@pytest.mark.e2e
def test_a_per_thread_store_keeps_a_session_per_thread_and_replaces_one_the_server_ended(env):
    store = ControlStore(env.config.control_dsn).per_thread()
    mine = _backend(store)
    assert _backend(store) == mine  # the same session, call after call
    theirs: list[int] = []
    t = threading.Thread(target=lambda: (theirs.append(_backend(store)), theirs.append(_backend(store)),
                                         store.close()))
    t.start()
    t.join()
    assert theirs[0] == theirs[1] != mine  # another thread: a session of its own, kept too
    with psycopg.connect(env.config.control_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (mine,))
    # the call that finds the session gone says so as an unreachable database would ...
    with pytest.raises(Unavailable, match="session ended"):
        store.active_epoch()
    # ... and the next one opens another
    assert _backend(store) not in (mine, *theirs)
    store.close()


@pytest.mark.e2e
def test_step_records_kept_back_are_written_at_once_with_the_times_they_happened(env):
    """A cutover keeps its write pause's step records back and writes them in one
    transaction: each row says when its step started and ended (on the database's clock,
    not the time of the write), a later record of a step updates its row, and a step's
    end reaches the audit log with how long it took."""
    store = ControlStore(env.config.control_dsn)
    old, new = _map(env, split=False), _map(env, split=True)
    first, _ = store.register_map(old)
    second, _ = store.register_map(new)
    name = f"steps{time.time_ns() % 10**9}"
    store.create_migration(name, first, second, plan(old, new), {})
    n = store.begin_attempt(name, "cutover", 1, {"epoch": second})
    t = time.monotonic()
    held = [StepRecord("fence", "started", {}, t - 0.9), StepRecord("fence", "done", {"ms": 300}, t - 0.6),
            StepRecord("drain", "started", {}, t - 0.6), StepRecord("drain", "failed", {"error": "x"}, t - 0.1)]
    store.record_steps(name, n, held)
    store.step(name, n, "drain", "started")  # a retry: the same row, started again
    store.step(name, n, "drain", "done", ms=5)
    steps = store.steps(name, n)
    assert list(steps) == ["fence", "drain"]
    fence, drain = steps["fence"], steps["drain"]
    assert fence["status"] == "done" and fence["detail"] == {"ms": 300}
    took = (fence["finished_at"] - fence["started_at"]).total_seconds()
    assert 0.25 < took < 0.35  # 0.3 s apart, however long the write took
    assert drain["status"] == "done" and drain["detail"] == {"error": "x", "ms": 5}
    assert drain["started_at"] == fence["finished_at"]
    with psycopg.connect(env.config.control_dsn) as conn:
        rows = conn.execute("SELECT event, detail FROM reshard.audit_log WHERE migration = %s AND event LIKE "
                            "'step.%%' ORDER BY id", (name,)).fetchall()
    assert [(e, d["step"]) for e, d in rows] == [("step.done", "fence"), ("step.failed", "drain"),
                                                 ("step.done", "drain")]
    assert 0.25 < float(rows[0][1]["seconds"]) < 0.35
