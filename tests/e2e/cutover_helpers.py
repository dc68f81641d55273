"""Shared setup for cutover tests: a migration with moving and staying keys, a write
load through the router that remembers every acknowledged write, and an audit of
which shard accepted which application write at which epoch."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg

from reshard.cluster import fence
from reshard.coordinator import Coordinator
from reshard.maps.shardmap import parse_map
from reshard.router import FenceRejected, Router
from reshard.stack.workload import create_table, seed

CLUSTERS = ("source1", "target1", "target2")
GROUP = {"key": "bigint", "tables": {"public.accounts": "id"}}
BEFORE = {"name": "before", "groups": {"accounts": {**GROUP, "hash": {"buckets": 4096, "clusters": {
    "source1": "0-4095"}}}}}
# source1 keeps a quarter of the keys; the rest moves to the two targets
AFTER = {"name": "after", "groups": {"accounts": {**GROUP, "hash": {"buckets": 4096, "clusters": {
    "source1": "0-1023", "target1": "1024-2559", "target2": "2560-4095"}}}}}

AUDIT = """
CREATE TABLE IF NOT EXISTS public.app_writes (
    id bigint, owner text, epoch bigint, at timestamptz DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION public.audit_app_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.app_writes (id, owner, epoch) VALUES (NEW.id, NEW.owner, reshard.shard_epoch());
  RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS audit_app_write ON public.accounts;
-- an ordinary (ENABLE ORIGIN) trigger: reshard's copy and appliers run as replicas and skip it,
-- so app_writes records exactly the application's writes and the epoch the shard was at
CREATE TRIGGER audit_app_write AFTER INSERT OR UPDATE ON public.accounts
    FOR EACH ROW EXECUTE FUNCTION public.audit_app_write();
"""


def setup(env, rows: int = 5_000, audit: bool = True) -> tuple[Coordinator, str]:
    """Table on every cluster, seeded on source1, migration created, fences installed."""
    for c in CLUSTERS:
        with env.conn(c) as conn:
            create_table(conn)
    with env.conn("source1") as conn:
        seed(conn, rows)
    co = Coordinator.open(env.config)
    name = env.migration()
    co.create(name, parse_map(AFTER, env.config.clusters), parse_map(BEFORE, env.config.clusters))
    epoch, m = co.store.active()
    fence.fence_map(env.config, epoch, m)
    if audit:
        for c in CLUSTERS:
            with env.conn(c) as conn:
                conn.execute(AUDIT)
    return co, name


@dataclass
class LoadStats:
    writes: int = 0
    rejected: int = 0  # refused by a fence past the router's bound: not acknowledged
    failed: Counter = field(default_factory=Counter)  # other errors by SQLSTATE (a shard down): not acknowledged
    max_stall_ms: float = 0.0  # the longest single write, retries included
    stalls: list = field(default_factory=list)


class RouterLoad:
    """Threads writing through routers: each thread owns the keys k = i (mod threads),
    so the last acknowledged value of every key is known exactly. Subclasses change
    what one write does (``write_one``) and what is remembered of it (``acked_one``)."""

    def __init__(self, config, threads: int = 4, rate: float = 400.0, keyspace: int = 8000, seed: int = 0,
                 wait_switching: float | None = 3.0, max_seconds: float = 600.0):
        self.config = config
        self.n = threads
        self.interval = threads / rate if rate else 0.0
        self.keyspace = keyspace
        self.seed = seed
        self.max_seconds = max_seconds
        self.acked: dict[int, str] = {}
        self.in_doubt: dict[int, set[str]] = {}  # key -> values written after its last ack whose commit is unknown
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.routers = [Router.from_config(config, wait_switching=wait_switching) for _ in range(2)]

    def write_one(self, router: Router, k: int, v: str, n: int) -> None:
        router.write("public.accounts", [k], lambda conn: conn.execute(
            "INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, 0) "
            "ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner", (k, v)))

    def acked_one(self, k: int, v: str) -> None:
        """Called with the lock held, once the write committed."""
        self.acked[k] = v

    def _run(self, i: int) -> None:
        rng = random.Random(self.seed * 100 + i)
        router = self.routers[i % len(self.routers)]
        n = 0
        started = next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
            k = rng.randrange(self.keyspace // self.n) * self.n + i + 1
            v = f"t{i}-{n}"
            n += 1
            t = time.monotonic()
            try:
                self.write_one(router, k, v, n)
            except FenceRejected:
                with self._lock:
                    self.stats.rejected += 1
                continue
            except psycopg.Error as exc:  # a shard down, a connection cut: not acknowledged
                with self._lock:
                    self.stats.failed[exc.sqlstate or type(exc).__name__] += 1
                    if isinstance(exc, psycopg.OperationalError):
                        # the server may have committed it and died before answering (an
                        # immediate stop): in doubt, so the key may hold this value instead
                        self.in_doubt.setdefault(k, set()).add(v)
                self._stop.wait(0.2)
                continue
            ms = (time.monotonic() - t) * 1000
            with self._lock:
                self.acked_one(k, v)
                self.in_doubt.pop(k, None)  # this acknowledged write is newer than any in doubt
                self.stats.writes += 1
                if ms > self.stats.max_stall_ms:
                    self.stats.max_stall_ms = ms
                if ms > 100:
                    self.stats.stalls.append((round(time.time(), 3), round(ms, 1), k))
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()

    def start(self) -> RouterLoad:
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.n)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        for r in self.routers:
            r.close()
        return self.stats


def assert_acked_on_owners(env, acked: dict[int, str], co: Coordinator) -> int:
    """Every acknowledged write is on its owner under the active map, with its last value."""
    _epoch, m = co.store.active()
    by_cluster: dict[str, dict[int, str]] = {}
    for c in CLUSTERS:
        with env.conn(c) as conn:
            by_cluster[c] = dict(conn.execute("SELECT id, owner FROM accounts WHERE id = ANY(%s)",
                                              (list(acked),)).fetchall())
    wrong = [(k, v, m.owner("public.accounts", [k]), by_cluster[m.owner("public.accounts", [k])].get(k))
             for k, v in acked.items() if by_cluster[m.owner("public.accounts", [k])].get(k) != v]
    assert not wrong, f"{len(wrong)} acknowledged write(s) missing on their owner, e.g. {wrong[:5]}"
    return len(acked)


def assert_no_stale_writes(env, co: Coordinator) -> int:
    """Every application write a shard accepted was to a key it owned at its epoch then."""
    maps: dict[int, object] = {}
    n = 0
    for c in CLUSTERS:
        with env.conn(c) as conn:
            rows = conn.execute("SELECT id, epoch FROM app_writes").fetchall()
        for k, epoch in rows:
            if epoch not in maps:
                maps[epoch] = co.store.get_map(epoch)
            owner = maps[epoch].owner("public.accounts", [k])
            assert owner == c, f"{c} accepted an application write to key {k} at epoch {epoch}, owned by {owner}"
            n += 1
    return n


def acceptors(env, key: int) -> list[str]:
    """Which clusters would accept an application write to ``key`` right now (probed in a
    transaction that is rolled back)."""
    out = []
    for c in CLUSTERS:
        with psycopg.connect(env.dsn(c)) as conn:
            conn.execute("SET lock_timeout = '5s'")
            try:
                conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'probe', 0) "
                             "ON CONFLICT (id) DO UPDATE SET owner = 'probe'", (key,))
                out.append(c)
            except psycopg.Error as exc:
                assert exc.sqlstate in (fence.FENCED, fence.NOT_OWNER), exc
            conn.rollback()
    return out


def moving_keys(n: int = 20) -> list[int]:
    before, after = parse_map(BEFORE), parse_map(AFTER)
    return [k for k in range(1, 10_000) if before.owner("public.accounts", [k]) !=
            after.owner("public.accounts", [k])][:n]
