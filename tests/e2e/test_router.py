"""Routers under load while ownership moves; a router that cannot refresh."""

import random
import threading
import time

import pytest

from reshard.cluster import fence, shard_schema
from reshard.control.store import ControlStore
from reshard.coordinator import Coordinator
from reshard.router import FenceRejected, Router
from tests.e2e.test_fence import MOVED, SPLIT

CLUSTERS = ("source1", "target1", "target2")
UPSERT = ("INSERT INTO kv (k, v) VALUES (%s, %s) ON CONFLICT (k) DO UPDATE "
          "SET v = EXCLUDED.v, epoch = reshard.shard_epoch()")


def setup(env) -> tuple[Coordinator, int]:
    co = Coordinator.open(env.config)
    epoch, _, _ = co.register_map(SPLIT, "two shards", initial=True)
    for c in CLUSTERS:
        with env.conn(c) as conn:
            shard_schema.install(conn)
            conn.execute("CREATE TABLE public.kv (k bigint PRIMARY KEY, v text NOT NULL, epoch bigint)")
    fence.fence_map(env.config, epoch, SPLIT)
    for c in CLUSTERS:  # every row says under which epoch its shard accepted it
        with env.conn(c) as conn:
            conn.execute("ALTER TABLE kv ALTER COLUMN epoch SET DEFAULT reshard.shard_epoch()")
    return co, epoch


def rows_by_cluster(env) -> dict[str, list[tuple]]:
    out = {}
    for c in CLUSTERS:
        with env.conn(c) as conn:
            out[c] = conn.execute("SELECT k, v, epoch FROM kv").fetchall()
    return out


def test_routers_under_load_never_write_a_key_where_it_is_not_owned(env):
    co, e1 = setup(env)
    maps = {e1: SPLIT}
    routers = [Router.from_config(env.config), Router.from_config(env.config)]
    stop = threading.Event()
    acked: dict[int, str] = {}
    counts = {"writes": 0, "rejected": 0}
    lock = threading.Lock()

    def writer(i: int) -> None:
        rng = random.Random(i)
        router = routers[i % 2]
        n = 0
        while not stop.is_set():
            k = rng.randrange(0, 2000) * 4 + i  # each thread owns its keys: per-key order is known
            v = f"w{i}-{n}"
            n += 1
            try:
                router.write("public.kv", [k], lambda conn, k=k, v=v: conn.execute(UPSERT, (k, v)))
            except FenceRejected:
                with lock:
                    counts["rejected"] += 1
                continue
            with lock:
                acked[k] = v
                counts["writes"] += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        e2, _, _ = co.register_map(MOVED, "a third shard")
        maps[e2] = MOVED
        before = counts["writes"]
        result = fence.switch_ownership(env.config, co.store, e2)
        assert result["to_epoch"] == e2
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        for r in routers:
            r.close()
    assert before > 200 and counts["writes"] - before > 200, counts
    assert counts["rejected"] == 0, "the routers should have retried their way through the switch"
    assert all(r.epoch == e2 for r in routers)

    rows = rows_by_cluster(env)
    for cluster, rs in rows.items():
        for k, _v, epoch in rs:
            assert maps[epoch].owner("public.kv", [k]) == cluster, (cluster, k, epoch)
    latest: dict[int, tuple[int, str]] = {}
    for rs in rows.values():
        for k, v, epoch in rs:
            if k not in latest or epoch > latest[k][0]:
                latest[k] = (epoch, v)
    assert {k: v for k, (_e, v) in latest.items()} == acked, "an acknowledged write is missing or stale"
    moved_keys = {k for k in acked if SPLIT.owner("public.kv", [k]) != MOVED.owner("public.kv", [k])}
    assert any(k for k, _v, ep in rows["target2"] if ep == e2 and k in moved_keys)


def test_a_router_that_cannot_refresh_gets_fence_errors_not_silent_writes(env):
    co, e1 = setup(env)
    stale = Router.from_config(env.config, listen=False, retry_for=0.5)
    moving = [k for k in range(1000) if SPLIT.owner("public.kv", [k]) == "source1"
              and MOVED.owner("public.kv", [k]) == "target2"][:10]
    staying = [k for k in range(1000) if MOVED.owner("public.kv", [k]) == "source1"][:10]
    for k in moving + staying:
        stale.write("public.kv", [k], lambda conn, k=k: conn.execute(UPSERT, (k, "before")))
    stale.store = ControlStore("host=127.0.0.1 port=1 dbname=nope connect_timeout=1")  # the control DB is gone
    e2, _, _ = co.register_map(MOVED, "a third shard")
    fence.switch_ownership(env.config, co.store, e2)
    for k in moving:
        with pytest.raises(FenceRejected) as e:
            stale.write("public.kv", [k], lambda conn, k=k: conn.execute(UPSERT, (k, "after")))
        assert e.value.sqlstate == fence.NOT_OWNER and e.value.cluster == "source1"
        assert f"belongs to target2 at epoch {e2}" in str(e.value)
    for k in staying:  # keys that did not move are still written, to their owner
        stale.write("public.kv", [k], lambda conn, k=k: conn.execute(UPSERT, (k, "after")))
    assert stale.epoch == e1
    stale.close()
    with env.conn("source1") as conn:
        got = dict(conn.execute("SELECT k, v FROM kv WHERE k = ANY(%s)", (moving,)).fetchall())
    assert set(got.values()) == {"before"}
