"""The router library: which shard holds a key, and a connection to read or write it there.

    from reshard.router import Router

    router = Router.from_config(load_config())          # reads the active map
    def deposit(conn):
        conn.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (42,))
    router.write("public.accounts", [42], deposit)     # runs on the owner, in a transaction
    balance = router.read("public.accounts", [42],
                          lambda conn: conn.execute("SELECT balance FROM accounts WHERE id = %s", (42,)).fetchall())
    print(router.owner("public.accounts", [42]), router.epoch)
    router.close()

The map is cached. It is refreshed when the control database announces a new epoch
(LISTEN reshard_map) and whenever a shard's fence rejects a write. A rejected write
is retried, with backoff, on the owner of the refreshed map for a bounded time;
after that, ``FenceRejected`` is raised. It is never written to a shard that does
not own the key: the fence on the shard makes sure of that even when the router's
map is stale or its refresh is cut off.

Proof features (issue 12), for routers made with ``from_config``:

- **Shadow reads.** While a migration is shadowing (``reshard shadow NAME --sample F``),
  ``read`` repeats a sample of the reads of moving keys on their new owner, off the
  request path, and compares (reshard/proof/shadow.py). A read function must read only the
  rows of the key it is given, and return comparable values (rows, not cursors).
- **Hedged reads.** With ``hedge_after`` set, a read of a key whose migration is baking
  (cut over, reverse replication running) that its new owner has not answered within
  ``hedge_after`` seconds is also sent to the old owner, and the first answer wins. The
  old owner is as current as reverse replication (``reshard status`` shows its lag).
- **Reports.** Every ``report_every`` seconds the router writes its counters (reads,
  writes, errors, fence rejections, hedged reads, shadow outcomes per table) to the
  control database: the exporter shows them and a bake watches them (cutover/bake.py).
  Migrations and reports are refreshed by the listener thread (``listen=True``).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from reshard.cluster.fence import FENCED, NOT_OWNER
from reshard.config import Config
from reshard.control import states
from reshard.control.maps import MAP_CHANNEL
from reshard.control.states import State
from reshard.control.store import ControlStore
from reshard.errors import ConfigError, ReshardError, Unavailable
from reshard.maps.planner import Move, Plan, plan
from reshard.maps.shardmap import ShardMap
from reshard.proof.shadow import Shadowed, ShadowReader

log = logging.getLogger(__name__)
POLL_EVERY_S = 2.0  # how often migrations (shadow settings, baking) are reloaded
COUNTERS = ("reads", "writes", "errors", "fence_rejections", "hedged", "hedge_won")

T = TypeVar("T")


class FenceRejected(ReshardError):
    """The shards kept rejecting a write (fenced or not the owner) past the retry bound."""

    def __init__(self, message: str, sqlstate: str, cluster: str):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.cluster = cluster


class _Migration:
    """What the router needs of a live migration: its plan, shadow sample, whether baking."""

    def __init__(self, name: str, state: str, p: Plan, settings: dict):
        self.name, self.state, self.plan = name, state, p
        shadow = settings.get("shadow") or {}
        self.sample = float(shadow.get("sample") or 0.0)
        self.tables: dict[str, float] = {t: float(f) for t, f in (shadow.get("tables") or {}).items()}
        self.moves: dict[tuple[str, str, str], Move] = {(m.group, m.source, m.target): m for m in p.moves}

    def fraction(self, table: str) -> float:
        return self.tables.get(table, self.sample)

    def moving(self, table: str, key: Sequence[Any]) -> Move | None:
        group = self.plan.new.group_of(table).name
        old, new = self.plan.owners(table, key)
        return self.moves.get((group, old, new)) if old != new else None


class Router:
    def __init__(self, control_dsn: str, shards: dict[str, str], *, listen: bool = True,
                 retry_for: float = 2.0, wait_switching: float | None = None,
                 connect_timeout: int = 5, config: Config | None = None,
                 hedge_after: float | None = None, report_every: float = 5.0,
                 catch_up: Callable[[str], Any] | None = None):
        """``shards`` maps cluster names to DSNs. ``retry_for`` bounds how long a rejected
        write is retried; ``wait_switching``, if set, lets writes to keys that are
        switching owner (fenced, RS001) wait that long instead. ``config`` (given by
        ``from_config``) enables shadow reads; ``hedge_after`` (seconds) hedged reads.
        ``catch_up(migration)`` proves the targets hold every change committed so far,
        which settling a shadow read's difference needs (default: reshard.proof.catchup's proof,
        loaded when first needed; never the coordinator or the CLI)."""
        self.store = ControlStore(control_dsn)
        self.config = config
        self.hedge_after = hedge_after
        self.report_every = report_every
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.started_at = datetime.now(UTC)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._migrations: list[_Migration] = []
        self._plans: dict[tuple[int, int], Plan] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._polled = self._reported = 0.0
        self.shards = dict(shards)
        self.retry_for = retry_for
        self.wait_switching = wait_switching
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._epoch, self._map = self._load()
        self._closed = threading.Event()
        self.refreshes = 0
        self.shadow = ShadowReader(config, self.store, self.connection, catch_up) if config is not None else None
        self._poll_migrations()
        self._listener: threading.Thread | None = None
        if listen:
            self._listener = threading.Thread(target=self._listen, name="reshard-router-listen", daemon=True)
            self._listener.start()

    @classmethod
    def from_config(cls, config: Config, **kw: Any) -> Router:
        return cls(config.control_dsn, {n: c.dsn for n, c in config.clusters.items()}, config=config, **kw)

    # ---- the map ---------------------------------------------------------------------
    def _load(self) -> tuple[int, ShardMap]:
        active = self.store.active()
        if active is None:
            raise ConfigError("no active shard map in the control database")
        return active

    @property
    def epoch(self) -> int:
        return self._epoch

    def refresh(self) -> bool:
        """Reload the active map; True if the epoch changed. Failures keep the old map."""
        try:
            epoch, m = self._load()
        except (Unavailable, psycopg.Error):
            return False
        with self._lock:
            changed = epoch != self._epoch
            if epoch >= self._epoch:
                self._epoch, self._map = epoch, m
            self.refreshes += 1
        return changed

    def owner(self, table: str, key: Sequence[Any]) -> str:
        with self._lock:
            m = self._map
        return m.owner(table, key)

    def _listen(self) -> None:
        delay = 0.2
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.store.dsn, autocommit=True, connect_timeout=self.connect_timeout) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(MAP_CHANNEL)))
                    self.refresh()  # whatever was announced while we were not listening
                    delay = 0.2
                    while not self._closed.is_set():
                        for _n in conn.notifies(timeout=0.5):
                            self.refresh()
                        self._tick()
            except psycopg.Error:
                self._closed.wait(delay)
                delay = min(delay * 2, 5.0)

    # ---- migrations, reports -------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._polled >= POLL_EVERY_S:
            self._poll_migrations()
        if now - self._reported >= self.report_every:
            self.report()

    def _poll_migrations(self) -> None:
        """Reload the live migrations this router shadows or hedges for (failures keep the old)."""
        self._polled = time.monotonic()
        try:
            live = []
            for r in self.store.migrations():
                if r["state"] not in (*states.SHADOWABLE, State.BAKING):
                    continue
                ep = (r["from_epoch"], r["to_epoch"])
                if ep not in self._plans:
                    self._plans[ep] = plan(self.store.get_map(ep[0]), self.store.get_map(ep[1]))
                live.append(_Migration(r["name"], r["state"], self._plans[ep], r["settings"] or {}))
        except (Unavailable, psycopg.Error) as exc:
            log.warning("router: could not reload migrations (keeping the last ones): %s", exc)
            return
        self._migrations = live

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counters[what] += n

    def stats(self) -> dict[str, Any]:
        """This router's counters and, per table, its shadow reads' outcomes."""
        with self._lock:
            out: dict[str, Any] = dict(self.counters)
        out["shadow"] = self.shadow.snapshot() if self.shadow is not None else {}
        return out

    def report(self) -> None:
        """Write the counters to the control database (the listener does it every ``report_every`` s)."""
        self._reported = time.monotonic()
        s = self.stats()
        shadow = s.pop("shadow")
        try:
            self.store.report_router(self.name, self._epoch, self.started_at, s, shadow)
        except (Unavailable, psycopg.Error) as exc:
            log.warning("router: could not report its counters: %s", exc)

    # ---- reading ---------------------------------------------------------------------------
    def _on(self, cluster: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        conn = self.connection(cluster)
        with conn.transaction():
            return fn(conn)

    def read(self, table: str, key: Sequence[Any], fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn(conn)`` in a transaction on the shard that owns ``key`` and return its
        result; shadowed or hedged as the module docstring says."""
        cluster = self.owner(table, key)
        old = self._hedge_to(table, key, cluster) if self.hedge_after is not None else None
        try:
            result = self._hedged(cluster, old, fn) if old is not None else self._on(cluster, fn)
        except Exception:
            self._count("errors")
            raise
        self._count("reads")
        if self.shadow is not None:
            for m in self._migrations:
                if m.state in states.SHADOWABLE and random.random() < m.fraction(table):
                    move = m.moving(table, key)
                    if move is not None and move.source == cluster:
                        self.shadow.submit(Shadowed(m.name, m.plan, move), table, tuple(key), fn, result)
        return result

    def _hedge_to(self, table: str, key: Sequence[Any], cluster: str) -> str | None:
        """The old owner of a key cut over by a baking migration, if ``cluster`` is its new owner."""
        for m in self._migrations:
            if m.state == State.BAKING:
                move = m.moving(table, key)
                if move is not None and move.target == cluster:
                    return move.source
        return None

    def _hedged(self, cluster: str, old: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reshard-hedge")
            pool = self._pool
        first = pool.submit(self._on, cluster, fn)
        try:
            return first.result(timeout=self.hedge_after)
        except FutureTimeout:
            pass
        self._count("hedged")
        second = pool.submit(self._on, old, fn)
        done, _ = wait([first, second], return_when=FIRST_COMPLETED)
        winner = first if first in done else second
        if winner.exception() is not None:  # the other may still answer
            winner = second if winner is first else first
        if winner is second:
            self._count("hedge_won")
        return winner.result()

    # ---- writing -------------------------------------------------------------------------
    def connection(self, cluster: str) -> psycopg.Connection[Any]:
        """This thread's connection to ``cluster`` (opened on first use)."""
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(cluster)
        if conn is None or conn.closed:
            try:
                dsn = self.shards[cluster]
            except KeyError:
                raise ConfigError(f"the map names cluster {cluster!r}, which this router has no DSN for") from None
            conn = psycopg.connect(dsn, connect_timeout=self.connect_timeout)
            conns[cluster] = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def write(self, table: str, key: Sequence[Any], fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn(conn)`` in a transaction on the shard that owns ``key``, retrying
        fence rejections on the refreshed owner within the bounds."""
        started = time.monotonic()
        delay = 0.01
        while True:
            cluster = self.owner(table, key)
            conn = self.connection(cluster)
            try:
                with conn.transaction():
                    out = fn(conn)
                self._count("writes")
                return out
            except psycopg.Error as exc:
                code = exc.sqlstate
                if code not in (FENCED, NOT_OWNER):
                    self._count("errors")
                    raise
                self._count("fence_rejections")
                bound = self.wait_switching if (code == FENCED and self.wait_switching) else self.retry_for
                if time.monotonic() - started >= bound:
                    self._count("errors")
                    raise FenceRejected(
                        f"{cluster} rejected the write for {time.monotonic() - started:.2f}s: "
                        f"{str(exc).strip().splitlines()[0]}", code, cluster,
                    ) from None
                if code == NOT_OWNER:
                    self.refresh()
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        if self.shadow is not None:
            self.shadow.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._listener is not None:
            self.report()  # the last counters
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except Exception:
                    pass
            self._conns.clear()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
