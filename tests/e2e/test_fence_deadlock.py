"""The fence never deadlocks with application transactions (invariant 9).

Application transactions touch two sharded tables in both orders (accounts then
ledger, ledger then accounts, with a pause between, as a TPC-B-like transfer does),
on the cluster whose fence every cutover and rollback changes. Locking the tables one
by one in a fixed order used to close a lock cycle with the second kind; now every
switch must finish, and no application transaction may see SQLSTATE 40P01. (The
write-pause budget is generous here: on two busy cores the drain under this load can
take seconds, which is a throughput matter, measured by bench/cutover_pause.py.)
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import psycopg

from reshard.cluster import fence
from reshard.coordinator import Coordinator
from reshard.cutover.orchestrator import SwitchOptions
from reshard.maps.shardmap import parse_map
from reshard.stack.workload import create_table, seed
from tests.e2e.cutover_helpers import CLUSTERS
from tests.e2e.helpers import ApplierThread, assert_verified

TABLES = {"public.accounts": "id", "public.ledger": "account_id"}
GROUP = {"key": "bigint", "tables": TABLES}
BEFORE = {"name": "before", "groups": {"accounts": {**GROUP, "hash": {"buckets": 64, "clusters": {
    "source1": "0-63"}}}}}
AFTER = {"name": "after", "groups": {"accounts": {**GROUP, "hash": {"buckets": 64, "clusters": {
    "source1": "0-31", "target1": "32-47", "target2": "48-63"}}}}}
LEDGER = """
DROP TABLE IF EXISTS public.ledger;
CREATE TABLE public.ledger (account_id bigint NOT NULL, id bigserial, amount numeric(14,2) NOT NULL,
                            PRIMARY KEY (account_id, id));
"""


class TwoTableLoad:
    """Transfers on source1's staying keys, half locking accounts first, half ledger first."""

    def __init__(self, dsn: str, keys: list[int], threads: int = 4):
        self.dsn, self.keys, self.n = dsn, keys, threads
        self.stop_event = threading.Event()
        self.errors: Counter = Counter()
        self.commits = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, i: int) -> None:
        rng = random.Random(i)
        with psycopg.connect(self.dsn) as conn:
            while not self.stop_event.is_set():
                k = rng.choice(self.keys)
                first_ledger = i % 2 == 1
                try:
                    with conn.transaction():
                        if first_ledger:
                            conn.execute("INSERT INTO public.ledger (account_id, amount) VALUES (%s, 1)", (k,))
                        conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = %s", (k,))
                        time.sleep(0.003)
                        if not first_ledger:
                            conn.execute("INSERT INTO public.ledger (account_id, amount) VALUES (%s, 1)", (k,))
                    with self.lock:
                        self.commits += 1
                except psycopg.Error as exc:
                    with self.lock:
                        self.errors[exc.sqlstate] += 1

    def __enter__(self) -> TwoTableLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)


def test_cutover_and_rollback_under_two_table_transactions_in_both_orders(env):
    for c in CLUSTERS:
        with env.conn(c) as conn:
            create_table(conn)
            conn.execute(LEDGER)
    with env.conn("source1") as conn:
        seed(conn, 2_000)
        conn.execute("INSERT INTO public.ledger (account_id, amount) SELECT g, 0 FROM generate_series(1, 2000) g")
    co = Coordinator.open(env.config)
    name = env.migration()
    after = parse_map(AFTER, env.config.clusters)
    co.create(name, after, parse_map(BEFORE, env.config.clusters))
    epoch, m = co.store.active()
    fence.fence_map(env.config, epoch, m)
    co.start(name)
    staying = [k for k in range(1, 2001) if after.owner("public.accounts", [k]) == "source1"][:200]
    outcomes = []
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        with TwoTableLoad(env.dsn("source1"), staying) as load:
            time.sleep(1.0)
            for _ in range(3):
                for kind, switch in (("cutover", lambda: co.cutover(
                        name, SwitchOptions(max_write_pause=10, require_verified=False))),
                        ("rollback", lambda: co.rollback(name, SwitchOptions(max_write_pause=10)))):
                    for _try in range(3):
                        out = switch()
                        outcomes.append((kind, out.outcome, out.message, out.steps))
                        # a drain that Debezium does not confirm in time (Connect rebalancing its
                        # tasks when the reverse connectors come and go) backs out and is retried;
                        # a lock problem never is
                        if out.outcome == "done" or "has not confirmed" not in out.message:
                            break
                    assert out.outcome == "done", (outcomes, dict(load.errors))
            time.sleep(0.5)
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
    print(f"\n{load.commits} transfers committed, errors by SQLSTATE: {dict(load.errors)}; switches: {outcomes}")
    assert not [o for o in outcomes if "lock" in o[2] or "deadlock" in o[2]], outcomes
    assert load.errors.get("40P01", 0) == 0, load.errors
    assert not load.errors, load.errors  # staying keys: never fenced, never owned elsewhere
    assert load.commits > 200
