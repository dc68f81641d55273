"""Access to the control database. Every durable fact about a migration goes through here.

``ControlStore`` is composed of one part per concept (maps, migration records, what workers
report, the switch's records, the audit log); each part's SQL lives in its own module.
Several calls that must commit together run in a unit of work::

    with store.unit() as uow:
        uow.activate(epoch)
        uow.record_wave(name, wave, buckets, epoch, "cut")
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from reshard.cluster.session import connect, first_line
from reshard.control.audit import AuditLog
from reshard.control.ddl import DdlRecords
from reshard.control.lease import Lease
from reshard.control.slots import SlotRecords
from reshard.control.switch import SwitchRecords
from reshard.control.workers import WorkerRecords
from reshard.errors import Unavailable
from reshard.schema_migrations import upgrade

SCHEMA_LOCK = 7265736861726400  # advisory lock key of the control schema's upgrades


class _Borrowed:
    """A pinned connection used like a fresh one: ``with store.connect() as conn`` commits
    or rolls back at the end of the block but keeps the connection open; inside a unit of
    work it does neither (the unit commits or rolls back once, at its end)."""

    def __init__(self, conn: psycopg.Connection[Any], settle: bool):
        self.conn = conn
        self.settle = settle

    def __enter__(self) -> psycopg.Connection[Any]:
        return self.conn

    def __exit__(self, exc_type, exc: BaseException | None, _tb: object) -> None:
        if not self.settle:
            return
        if exc_type is None:
            self.conn.commit()
        elif not (self.conn.closed or self.conn.broken):
            self.conn.rollback()
        elif isinstance(exc, psycopg.OperationalError):
            # a kept session the server ended (a restart) or lost: said as a fresh connection's
            # failure would say it; the next call opens another (see ControlStore.connect)
            raise Unavailable(f"the control database's session ended: {first_line(exc)}") from exc


class ControlStore(SwitchRecords, WorkerRecords, SlotRecords, DdlRecords, AuditLog):
    """The control database: maps < migration records < the switch's records, beside what
    workers report and the audit log."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._schema_ready = False
        self._pinned: psycopg.Connection[Any] | None = None
        self._in_unit = False
        self._threads: threading.local | None = None  # per_thread(): each thread's own session

    def per_thread(self) -> ControlStore:
        """A store that keeps one session per thread, opened on its first call and opened
        again when the server ended it: for a long-running worker, whose loop and helper
        threads each read or write a few rows every second or two (a new session each time
        cost the applier ~10 connections a second, and the control server a backend each)."""
        store = ControlStore(self.dsn)
        store._schema_ready = self._schema_ready
        store._threads = threading.local()
        return store

    def _thread_session(self) -> psycopg.Connection[Any]:
        assert self._threads is not None
        conn = getattr(self._threads, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._threads.conn = self.connect(fresh=True)
        return conn

    def close(self) -> None:
        """Close this thread's session of a ``per_thread`` store (others close when their threads' stores go)."""
        conn = getattr(self._threads, "conn", None) if self._threads is not None else None
        if conn is not None:
            conn.close()
            self._threads.conn = None  # type: ignore[union-attr]

    @contextmanager
    def pinned(self) -> Iterator[ControlStore]:
        """A store whose calls share one connection: a cutover records many small facts
        inside its write pause, and a connection per record would cost milliseconds each."""
        store = ControlStore(self.dsn)
        store._schema_ready = self._schema_ready
        store._pinned = store.connect()
        try:
            yield store
        finally:
            store._pinned.close()

    @contextmanager
    def unit(self) -> Iterator[ControlStore]:
        """A unit of work: every call on the yielded store runs in one transaction, committed
        when the block ends and rolled back if it raises (on this store's pinned connection,
        or on one of its own)."""
        if self._in_unit:
            yield self
            return
        if self._threads is not None:
            if getattr(self._threads, "in_unit", False):
                yield self
                return
            with self._thread_session().transaction():
                self._threads.in_unit = True
                try:
                    yield self
                finally:
                    self._threads.in_unit = False
            return
        if self._pinned is None:
            with self.pinned() as store, store.unit() as uow:
                yield uow
            return
        with self._pinned.transaction():
            self._in_unit = True
            try:
                yield self
            finally:
                self._in_unit = False

    def connect(self, fresh: bool = False, **kwargs: Any) -> psycopg.Connection[dict[str, Any]]:
        """A connection to the control database whose rows are dicts (schema upgraded first):
        the store's pinned session or this thread's (``per_thread``) when it has one, unless
        ``fresh`` or connection options are asked for."""
        if self._pinned is not None and not kwargs and not fresh:
            return _Borrowed(self._pinned, settle=not self._in_unit)  # type: ignore[return-value]
        if self._threads is not None and not kwargs and not fresh:
            return _Borrowed(self._thread_session(),  # type: ignore[return-value]
                             settle=not getattr(self._threads, "in_unit", False))
        conn: psycopg.Connection[dict[str, Any]] = connect(self.dsn, "the control database", row_factory=dict_row,
                                                            **kwargs)
        if not self._schema_ready:
            upgrade(conn, "reshard.control.migrations", "control", SCHEMA_LOCK, "the control database")
            self._schema_ready = True
        return conn

    @contextmanager
    def lease(self, migration: str, purpose: str) -> Iterator[Lease]:
        """Hold the migration's lease while the block runs: one command at a time acts on a
        migration (start, cutover, rollback, complete, abort), whatever host it runs on.

        The lease is a session advisory lock in the control database, so it dies with its
        holder's connection: a SIGKILLed holder never blocks a rerun, and a holder whose
        connection is gone has lost it (``Lease.check`` says so before every step that
        acts). Taken on a pinned store it lives on the pinned connection, which makes the
        cutover's activation, committed on that same session, provably the holder's.
        The holder is recorded in ``reshard.leases`` so a refusal can name it.
        """
        own = self._pinned is None
        conn = self.connect(autocommit=True) if self._pinned is None else self._pinned
        lease = Lease(conn, migration, purpose)
        try:
            lease.acquire()
            yield lease
        finally:
            if own:
                conn.close()  # ends the session: the lock goes with it
            else:
                lease.release()

