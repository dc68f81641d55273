"""The shard-side fence on a live PostgreSQL: who may write which key."""

import threading
import time

import psycopg
import pytest

from reshard.cluster import fence, shard_schema
from reshard.errors import BudgetExceeded, WaitTimeout
from reshard.maps.shardmap import parse_map

KV = {"key": "bigint", "tables": {"public.kv": "k"}}
SPLIT = parse_map({"groups": {"kv": {**KV, "hash": {"buckets": 4096, "clusters": {
    "source1": "0-2047", "target1": "2048-4095"}}}}})
MOVED = parse_map({"groups": {"kv": {**KV, "hash": {"buckets": 4096, "clusters": {
    "source1": "0-1023", "target2": "1024-2047", "target1": "2048-4095"}}}}})


def kv_tables(env):
    for c in ("source1", "target1", "target2"):
        with env.conn(c) as conn:
            conn.execute("CREATE TABLE public.kv (k bigint PRIMARY KEY, v text)")


def keys_of(m, cluster, n=20):
    return [k for k in range(5000) if m.owner("public.kv", [k]) == cluster][:n]


def test_fence_rejects_non_owned_keys_names_the_owner_and_lets_reshard_through(env):
    kv_tables(env)
    with env.conn("target1") as conn:
        shard_schema.install(conn)
        assert fence.install(conn, fence.steady("target1", 5, SPLIT)) == ["public.kv"]
        assert fence.install(conn, fence.steady("target1", 5, SPLIT)) == ["public.kv"]  # idempotent
        mine, theirs = keys_of(SPLIT, "target1")[0], keys_of(SPLIT, "source1")[0]
        conn.execute("INSERT INTO kv VALUES (%s, 'ok')", (mine,))
        with pytest.raises(psycopg.Error) as e:
            conn.execute("INSERT INTO kv VALUES (%s, 'stale')", (theirs,))
        assert e.value.sqlstate == fence.NOT_OWNER
        assert f"key {theirs} of public.kv belongs to source1 at epoch 5, not to target1" in str(e.value)
        with pytest.raises(psycopg.Error):  # moving a key out of the shard by UPDATE is a write too
            conn.execute("UPDATE kv SET k = %s WHERE k = %s", (theirs, mine))
        assert conn.execute("SELECT reshard.shard_epoch()").fetchone()[0] == 5
    with env.conn("target1") as applier:
        shard_schema.writer_session(applier)
        applier.execute("INSERT INTO kv VALUES (%s, 'from reshard')", (theirs,))
        state = fence.state(applier)
        assert state[0]["epoch"] == 5 and state[0]["active"] and state[0]["mode"] == "steady"
        assert fence.remove(applier, ["public.kv"]) == ["public.kv"]
        assert fence.remove(applier, ["public.kv"]) == ["public.kv"]  # idempotent: no trigger left to drop
        assert fence.state(applier) == []
    with env.conn("target1") as conn:
        conn.execute("INSERT INTO kv VALUES (%s, 'unfenced')", (theirs + 100_000,))


def test_switching_keys_are_fenced_with_their_own_sqlstate(env):
    kv_tables(env)
    with env.conn("source1") as conn:
        shard_schema.install(conn)
        fence.install(conn, fence.switching("source1", 6, SPLIT, MOVED))
        staying, leaving = keys_of(MOVED, "source1")[0], keys_of(MOVED, "target2")[0]
        conn.execute("INSERT INTO kv VALUES (%s, 'stays')", (staying,))
        with pytest.raises(psycopg.Error) as e:
            conn.execute("INSERT INTO kv VALUES (%s, 'leaving')", (leaving,))
        assert e.value.sqlstate == fence.FENCED
        assert "is fenced on source1 at epoch 6" in str(e.value)


def test_changing_the_fence_waits_for_writes_in_progress_and_is_bounded(env):
    kv_tables(env)
    with env.conn("source1") as setup:
        shard_schema.install(setup)
        fence.install(setup, fence.steady("source1", 1, SPLIT))
    k = keys_of(MOVED, "target2")[0]  # owned by source1 at epoch 1, by target2 later
    writer = psycopg.connect(env.dsn("source1"))
    writer.execute("INSERT INTO kv VALUES (%s, 'in flight')", (k,))  # passed the check, not committed
    with env.conn("source1") as conn:
        with pytest.raises(WaitTimeout):
            fence.install(conn, fence.steady("source1", 2, MOVED), lock_timeout_ms=300)
        assert fence.state(conn)[0]["epoch"] == 1  # unchanged
        done = threading.Event()

        def change():
            fence.install(conn, fence.steady("source1", 2, MOVED), lock_timeout_ms=10_000)
            done.set()

        t = threading.Thread(target=change)
        t.start()
        time.sleep(0.5)
        assert not done.is_set()  # still waiting for the in-flight write
        writer.commit()  # committed under epoch 1, where source1 owned it
        t.join(timeout=10)
        assert done.is_set()
    writer.close()
    with env.conn("source1") as conn:
        with pytest.raises(psycopg.Error) as e:
            conn.execute("UPDATE kv SET v = 'late' WHERE k = %s", (k,))
        assert e.value.sqlstate == fence.NOT_OWNER


def test_a_fence_change_past_its_deadline_changes_nothing(env):
    """A cutover's flips change a table only if the cluster's clock is still before the
    fence's deadline once the table is locked; past it, none of the change commits."""
    kv_tables(env)
    with env.conn("source1") as conn:
        conn.autocommit = True
        shard_schema.install(conn)
        assert fence.install(conn, fence.steady("source1", 5, SPLIT)) == ["public.kv"]
        past = conn.execute("SELECT (clock_timestamp() - interval '1 second')::text").fetchone()[0]
        with pytest.raises(BudgetExceeded, match="deadline"):
            fence.install(conn, fence.steady("source1", 6, MOVED), only_before=past)
        assert conn.execute("SELECT reshard.shard_epoch()").fetchone()[0] == 5
        assert fence.state(conn)[0]["epoch"] == 5
        moving = next(k for k in keys_of(SPLIT, "source1") if MOVED.owner("public.kv", [k]) == "target2")
        conn.execute("INSERT INTO kv VALUES (%s, 'still mine at epoch 5')", (moving,))
        future = conn.execute("SELECT (clock_timestamp() + interval '1 minute')::text").fetchone()[0]
        assert fence.install(conn, fence.steady("source1", 6, MOVED), only_before=future) == ["public.kv"]
        assert conn.execute("SELECT reshard.shard_epoch()").fetchone()[0] == 6 and fence.state(conn)[0]["epoch"] == 6
        with pytest.raises(psycopg.Error) as e:
            conn.execute("UPDATE kv SET v = 'moved away' WHERE k = %s", (moving,))
        assert e.value.sqlstate == fence.NOT_OWNER
