"""The router library: which shard holds a key, and a connection to write it there.

    from reshard.router import Router

    router = Router.from_config(load_config())          # reads the active map
    def deposit(conn):
        conn.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (42,))
    router.write("public.accounts", [42], deposit)     # runs on the owner, in a transaction
    print(router.owner("public.accounts", [42]), router.epoch)
    router.close()

The map is cached. It is refreshed when the control database announces a new epoch
(LISTEN reshard_map) and whenever a shard's fence rejects a write. A rejected write
is retried, with backoff, on the owner of the refreshed map for a bounded time;
after that, ``FenceRejected`` is raised. It is never written to a shard that does
not own the key: the fence on the shard makes sure of that even when the router's
map is stale or its refresh is cut off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from reshard.control.store import MAP_CHANNEL, ControlStore
from reshard.errors import ConfigError, ReshardError, Unavailable
from reshard.fence import FENCED, NOT_OWNER
from reshard.shardmap import ShardMap

T = TypeVar("T")


class FenceRejected(ReshardError):
    """The shards kept rejecting a write (fenced or not the owner) past the retry bound."""

    def __init__(self, message: str, sqlstate: str, cluster: str):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.cluster = cluster


class Router:
    def __init__(self, control_dsn: str, shards: dict[str, str], *, listen: bool = True,
                 retry_for: float = 2.0, wait_switching: float | None = None,
                 connect_timeout: int = 5):
        """``shards`` maps cluster names to DSNs. ``retry_for`` bounds how long a rejected
        write is retried; ``wait_switching``, if set, lets writes to keys that are
        switching owner (fenced, RS001) wait that long instead."""
        self.store = ControlStore(control_dsn)
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
        self._listener: threading.Thread | None = None
        if listen:
            self._listener = threading.Thread(target=self._listen, name="reshard-router-listen", daemon=True)
            self._listener.start()

    @classmethod
    def from_config(cls, config, **kw: Any) -> Router:
        return cls(config.control_dsn, {n: c.dsn for n, c in config.clusters.items()}, **kw)

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
                    conn.execute(f"LISTEN {MAP_CHANNEL}")
                    self.refresh()  # whatever was announced while we were not listening
                    delay = 0.2
                    while not self._closed.is_set():
                        for _n in conn.notifies(timeout=0.5):
                            self.refresh()
            except psycopg.Error:
                self._closed.wait(delay)
                delay = min(delay * 2, 5.0)

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
                    return fn(conn)
            except psycopg.Error as exc:
                code = exc.sqlstate
                if code not in (FENCED, NOT_OWNER):
                    raise
                bound = self.wait_switching if (code == FENCED and self.wait_switching) else self.retry_for
                if time.monotonic() - started >= bound:
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
