"""The sample table and a live write load against it, for the demo, tests and benchmarks.

The table covers the types a migration must carry faithfully: bigint key, text,
numeric, timestamptz, jsonb, a nullable column, and values large enough to be
TOASTed (so updates that leave them unchanged arrive without them). The load mixes
inserts, updates (full and ones that leave the TOASTed column alone), deletes,
primary-key changes and multi-statement transactions, at a bounded rate, until told
to stop; it never runs past its ``max_seconds``.

With a ``router`` the load writes the way an application does during a migration:
each operation goes to the key's owner through ``reshard.router`` (so it follows a
cutover), one operation per transaction, and without primary-key changes (a key
change may cross shards, which one transaction cannot do).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reshard.maps.shardmap import table_ident

TABLE = "public.accounts"

DDL = """
CREATE TABLE public.accounts (
    id        bigint PRIMARY KEY,
    owner     text NOT NULL,
    balance   numeric(14,2) NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now(),
    attrs     jsonb NOT NULL DEFAULT '{}',
    note      text
);
-- store large notes out of line uncompressed, so they are TOASTed at ~2 kB
ALTER TABLE public.accounts ALTER COLUMN note SET STORAGE EXTERNAL;
"""

SEED = """
INSERT INTO public.accounts (id, owner, balance, opened_at, attrs, note)
SELECT g,
       'owner-' || g,
       round((random() * 100000)::numeric, 2),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '17 seconds',
       jsonb_build_object('tier', mod(g, 5), 'tags', jsonb_build_array('t' || mod(g, 3), 'x')),
       CASE WHEN mod(g, 100) = 0 THEN repeat(md5(g::text), 100)   -- 3.2 kB: TOASTed
            WHEN mod(g, 7) = 0 THEN NULL
            ELSE 'note ' || g END
FROM generate_series(%s::bigint, %s::bigint) g
"""


def create_table(conn: psycopg.Connection[Any], drop: bool = True) -> None:
    if drop:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table_ident(TABLE)))
    conn.execute(DDL)


def seed(conn: psycopg.Connection[Any], rows: int, first: int = 1) -> None:
    conn.execute(SEED, (first, first + rows - 1))
    conn.execute(sql.SQL("ANALYZE {}").format(table_ident(TABLE)))


@dataclass
class WorkloadStats:
    inserts: int = 0
    updates: int = 0
    toast_keeping_updates: int = 0
    deletes: int = 0
    key_changes: int = 0
    transactions: int = 0
    errors: int = 0
    last_error: str = ""
    written_keys: set = field(default_factory=set)

    @property
    def operations(self) -> int:
        return self.inserts + self.updates + self.toast_keeping_updates + self.deletes + self.key_changes

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "written_keys"}
        d["operations"] = self.operations
        return d


class Workload(threading.Thread):
    """Writes to ``accounts`` at about ``rate`` operations per second until stopped."""

    def __init__(self, dsn: str, rate: float = 200.0, max_seconds: float = 600.0, seed: int | None = None,
                 router=None):
        super().__init__(name="reshard-workload", daemon=True)
        self.dsn = dsn
        self.router = router
        self.rate = rate
        self.max_seconds = max_seconds
        self.rng = random.Random(seed)
        self.stats = WorkloadStats()
        self._halt = threading.Event()
        self._next_id = 0
        self._max_id = 0

    def stop(self) -> WorkloadStats:
        self._halt.set()
        self.join(timeout=30)
        return self.stats

    def _next(self) -> tuple[str, tuple, int, str]:
        """The next operation: (sql, params, the key it writes, kind), recorded in the stats."""
        r = self.rng.random()
        if self.router is not None:
            r *= 0.93  # no key changes through a router
        k = self.rng.randint(1, max(1, self._max_id))
        if r < 0.30:
            self._next_id += 1
            k = self._next_id
            sql = "INSERT INTO public.accounts (id, owner, balance, attrs, note) VALUES (%s, %s, %s, %s, %s)"
            params: tuple = (k, f"new-{k}", round(self.rng.uniform(0, 1000), 2), '{"tier": 9, "src": "load"}',
                             None if self.rng.random() < 0.3 else "fresh")
            kind = "inserts"
        elif r < 0.55:
            sql = ("UPDATE public.accounts SET balance = balance + %s, opened_at = now(), "
                   "attrs = attrs || jsonb_build_object('n', %s), note = coalesce(note, '') || '+' WHERE id = %s")
            params = (round(self.rng.uniform(-5, 5), 2), self.stats.updates, k)
            kind = "updates"
        elif r < 0.75:
            # leaves the (possibly TOASTed) note alone: Debezium sends it as unavailable
            k = self.rng.randint(1, max(1, self._max_id // 100)) * 100
            sql, params, kind = "UPDATE public.accounts SET balance = balance + 1 WHERE id = %s", (k,), \
                "toast_keeping_updates"
        elif r < 0.93:
            sql, params, kind = "DELETE FROM public.accounts WHERE id = %s", (k,), "deletes"
        else:
            # a key change of a row whose TOASTed note is unchanged would carry no note at all
            # under REPLICA IDENTITY DEFAULT (the applier pauses on it); keep those rows out
            k = k + 1 if k % 100 == 0 else k
            self._next_id += 1
            self.stats.written_keys.add(self._next_id)
            sql, params, kind = "UPDATE public.accounts SET id = %s WHERE id = %s", (self._next_id, k), "key_changes"
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        self.stats.written_keys.add(k)
        return sql, params, k, kind

    def run(self) -> None:
        started = time.monotonic()
        try:
            conn = psycopg.connect(self.dsn, autocommit=True)
        except psycopg.Error as exc:
            self.stats.errors += 1
            self.stats.last_error = str(exc)
            return
        with conn:
            self._max_id = conn.execute("SELECT coalesce(max(id), 0) FROM public.accounts").fetchone()[0]
            self._next_id = self._max_id + 1_000_000
            interval = 1.0 / self.rate if self.rate > 0 else 0.0
            next_at = time.monotonic()
            while not self._halt.is_set() and time.monotonic() - started < self.max_seconds:
                try:
                    if self.router is not None:
                        sql, params, key, _kind = self._next()
                        self.router.write(TABLE, [key], lambda c, sql=sql, params=params: c.execute(sql, params))
                    else:
                        with conn.transaction():
                            cur = conn.cursor()
                            n = 3 if self.rng.random() < 0.1 else 1  # some multi-statement transactions
                            for _ in range(n):
                                sql, params, _key, _kind = self._next()
                                cur.execute(sql, params)
                    self.stats.transactions += 1
                except Exception as exc:  # a failed write is counted and reported, the load goes on
                    self.stats.errors += 1
                    self.stats.last_error = str(exc).strip().splitlines()[0]
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._halt.wait(delay)
                else:
                    next_at = time.monotonic()
