"""Shadow reads: a sample of the application's reads, repeated on the key's new owner
and compared with the authoritative answer, off the request path.

While a migration is ``shadowing`` (``reshard shadow NAME --sample 0.01``), a
``Router.read`` of a moving key hands (table, key, read function, the owner's result)
to this module's queue and returns at once; the application never waits on the
shadow. One background thread runs the read function on the new owner and compares.

Replication lag is not corruption. A result that differs is only a *candidate*: the
candidates are confirmed in batches the way ``reshard verify`` settles a live load's
candidates (reshard/proof/verify.py): the key's rows are compared on both sides, and rows that
still differ are locked FOR SHARE where they are written, catch-up is proven to a
position taken under those locks, and only rows that differ then are a mismatch. A
confirmed mismatch is recorded (event ``shadow.mismatch`` and a failed verification,
so the cutover gate refuses until a verify passes again); the others count as lag.

A full queue drops the sample (counted), never blocks the application.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reshard.cluster.catalog import require_table
from reshard.cluster.session import connect, first_line
from reshard.config import Config
from reshard.control.store import ControlStore
from reshard.errors import WaitTimeout
from reshard.maps.planner import Move, Plan
from reshard.proof.verify import SESSION, compare, recheck
from reshard.retry import poll

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
CONFIRM_EVERY_S = 1.0   # candidates are confirmed in batches, at most this often
MAX_BATCH_KEYS = 200    # keys per (move, table) per confirmation
OUTCOMES = ("sampled", "matched", "differed", "lag", "mismatches", "dropped", "errors")


@dataclass(frozen=True)
class Shadowed:
    """A moving key of a shadowing migration: where its reads go and where they are repeated."""
    migration: str
    plan: Plan
    move: Move   # from the key's owner (the move's source) to its new owner (its target)


@dataclass
class _Job:
    target: Shadowed
    table: str
    key: tuple
    read: Callable[[psycopg.Connection[Any]], Any]
    result: Any


@dataclass
class ShadowStats:
    """Per-table outcome counters: sampled = matched + differed (+ errors);
    differed settles into lag or mismatches."""
    tables: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: dict.fromkeys(OUTCOMES, 0)))

    def add(self, table: str, outcome: str, n: int = 1) -> None:
        self.tables[table][outcome] += n

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {t: dict(c) for t, c in self.tables.items()}


def key_condition(plan: Plan, move: Move, table: str, keys: list[tuple]) -> sql.Composable:
    """SQL true for the rows of ``table`` whose shard key is one of ``keys``."""
    cols = plan.new.groups[move.group].key_columns(table)
    one = [sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier("t", c), sql.Literal(v))
                                 for c, v in zip(cols, k, strict=True)) for k in keys]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(sql.SQL("({})").format(c) for c in one))


class ShadowReader:
    """The background half of shadow reads: a bounded queue and one thread."""

    def __init__(self, config: Config, store: ControlStore,
                 connection: Callable[[str], psycopg.Connection[Any]],
                 catch_up: Callable[[str], Any] | None = None):
        self.config = config
        self.store = store
        self.connection = connection  # the router's per-thread connections (this thread's)
        # proves a migration's targets hold every change committed so far (settling a
        # difference needs it); by default reshard's proof, loaded only when first needed
        self.catch_up = catch_up or self._prove
        self.stats = ShadowStats()
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue(QUEUE_SIZE)
        self._pending: dict[tuple[str, Move, str], set[tuple]] = defaultdict(set)
        self._plans: dict[tuple[str, Move, str], Plan] = {}
        self._thread = threading.Thread(target=self._run, name="reshard-shadow", daemon=True)
        self._thread.start()

    def submit(self, target: Shadowed, table: str, key: tuple, read: Callable[[psycopg.Connection[Any]], Any],
               result: Any) -> None:
        try:
            self._queue.put_nowait(_Job(target, table, key, read, result))
        except queue.Full:
            self._count(table, "dropped")

    def _count(self, table: str, outcome: str, n: int = 1) -> None:
        with self._lock:
            self.stats.add(table, outcome, n)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return self.stats.snapshot()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued read is compared and every candidate settled (tests, shutdown)."""
        try:
            return poll(lambda: self._queue.unfinished_tasks == 0 and not self._pending, timeout=timeout,
                        interval=0.05, what="shadow reads settled")
        except WaitTimeout:
            return False

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    # ---- the background thread ---------------------------------------------------------
    def _run(self) -> None:
        last_confirm = time.monotonic()
        while True:
            try:
                job = self._queue.get(timeout=CONFIRM_EVERY_S)
            except queue.Empty:
                job = None
                if self._pending:
                    self._confirm()
                    last_confirm = time.monotonic()
                continue
            if job is None:
                self._queue.task_done()
                return
            try:
                self._compare(job)
            finally:
                self._queue.task_done()
            if self._pending and time.monotonic() - last_confirm >= CONFIRM_EVERY_S:
                self._confirm()
                last_confirm = time.monotonic()

    def _compare(self, job: _Job) -> None:
        self._count(job.table, "sampled")
        try:
            conn = self.connection(job.target.move.target)
            with conn.transaction():
                shadow = job.read(conn)
        except psycopg.Error as exc:
            self._count(job.table, "errors")
            log.warning("shadow read of %s key %s on %s failed: %s", job.table, list(job.key), job.target.move.target,
                        first_line(exc))
            return
        if shadow == job.result:
            self._count(job.table, "matched")
            return
        self._count(job.table, "differed")
        unit = (job.target.migration, job.target.move, job.table)
        self._plans[unit] = job.target.plan
        self._pending[unit].add(job.key)

    def _confirm(self) -> None:
        """Settle the candidates: lag, or a mismatch proven under row locks after catch-up."""
        units, self._pending = self._pending, defaultdict(set)
        for (migration, move, table), keys in units.items():
            batch = sorted(keys, key=repr)[:MAX_BATCH_KEYS]
            try:
                confirmed = self._confirm_unit(migration, self._plans[(migration, move, table)], move, table, batch)
            except Exception as exc:  # a confirmation that cannot run now is retried with the next batch
                log.warning("shadow reads: could not confirm %d candidate(s) of %s on %s: %s", len(batch), table,
                            move.target, exc)
                self._pending[(migration, move, table)].update(keys)
                continue
            self._count(table, "mismatches", len(confirmed))
            self._count(table, "lag", len(batch) - len({tuple(d["shard_key"]) for d in confirmed}))
            if len(keys) > len(batch):  # the rest waits for the next round
                self._pending[(migration, move, table)].update(set(keys) - set(batch))
            for d in confirmed:
                self.store.record_event(migration, "shadow.mismatch", move=move.id, table=table, **d)
                log.error("shadow reads: %s key %s differs between %s and %s: %s", table, d["key"], move.source,
                          move.target, d["problem"])
            if confirmed:
                # a failed verification: the cutover gate refuses
                self.store.record_event(migration, "verify", equal=False, mode="shadow",
                                        differences={f"{move.id}/{table}": confirmed[:10]})

    def _prove(self, migration: str) -> Any:
        from reshard.proof.catchup import prove_caught_up  # Kafka's client: loaded only if a read differs

        return prove_caught_up(self.config, self.store, migration, timeout=60)

    def _confirm_unit(self, migration: str, plan: Plan, move: Move, table: str, keys: list[tuple]) -> list[dict]:
        cfg = self.config
        with connect(cfg.cluster(move.source).dsn, f"source cluster {move.source}", autocommit=True) as src, \
                connect(cfg.cluster(move.target).dsn, f"target cluster {move.target}", autocommit=True) as tgt:
            for c in (src, tgt):
                c.execute(SESSION)
            info = require_table(src, table, move.source)
            with src.transaction(), tgt.transaction():
                check = compare(src, tgt, plan, move, table, info, within=key_condition(plan, move, table, keys))
        if not check.candidates:
            return []
        active = self.store.active()
        recheck(cfg, plan, check, lambda: self.catch_up(migration), 3, len(keys),
                active[1] if active else None)
        key_cols = plan.new.groups[move.group].key_columns(table)
        positions = [list(info.pk).index(c) for c in key_cols]
        return [{"key": d["key"], "shard_key": [d["key"][i] for i in positions] if d["key"] else [],
                 "problem": d["problem"]} for d in check.differences]
