"""The migration's lease: one command at a time acts on a migration, whatever host it runs on."""

from __future__ import annotations

import zlib
from typing import Any

import psycopg

from reshard.control.base import ACTOR
from reshard.errors import Busy, LeaseLost


class Lease:
    """The advisory lock behind ``ControlStore.lease``; see there."""

    NAMESPACE = 7  # first key of reshard's advisory locks on the control database

    def __init__(self, conn: psycopg.Connection[Any], migration: str, purpose: str):
        self.conn = conn
        self.migration = migration
        self.purpose = purpose
        self.key = zlib.crc32(migration.encode()) - (1 << 31)  # into int4 range

    def _q(self, sql: str, params: tuple = ()) -> dict | None:
        """One statement on the lease's session, committed at once (the session may be a
        pinned, non-autocommit connection)."""
        cur = self.conn.execute(sql, params)
        row = cur.fetchone() if cur.description else None
        if not self.conn.autocommit:
            self.conn.commit()
        return row

    def acquire(self) -> None:
        got = self._q("SELECT pg_try_advisory_lock(%s::int, %s::int) AS ok", (self.NAMESPACE, self.key))["ok"]
        if not got:
            holder = self._q(
                "SELECT holder, purpose, since FROM reshard.leases l WHERE migration = %s AND EXISTS ("
                "SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid)", (self.migration,))
            who = (f"{holder['purpose']} by {holder['holder']} since {holder['since']:%Y-%m-%d %H:%M:%S %Z}"
                   if holder else "another reshard process")
            raise Busy(f"migration {self.migration} is busy: {who} holds its lease; {self.purpose} was not started. "
                       "Wait for it to finish (reshard status shows it); a holder that died releases it at once")
        self._q(
            "INSERT INTO reshard.leases (migration, holder, purpose, backend_pid) VALUES (%s, %s, %s, "
            "pg_backend_pid()) ON CONFLICT (migration) DO UPDATE SET holder = EXCLUDED.holder, "
            "purpose = EXCLUDED.purpose, backend_pid = EXCLUDED.backend_pid, since = now()",
            (self.migration, ACTOR, self.purpose))

    def check(self) -> None:
        """Raise LeaseLost unless this session still holds the lease."""
        try:
            held = self._q(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                "AND classid = %s AND objid = %s::int::oid AND objsubid = 2 AND granted) AS held",
                (self.NAMESPACE, self.key))["held"]
        except psycopg.Error as exc:
            raise LeaseLost(f"lost the lease of migration {self.migration}: control database session ended "
                            f"({type(exc).__name__})") from None
        if not held:
            raise LeaseLost(f"lost the lease of migration {self.migration}")

    def release(self) -> None:
        try:
            if not self.conn.closed:
                if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self.conn.rollback()
                self._q("DELETE FROM reshard.leases WHERE migration = %s AND backend_pid = pg_backend_pid()",
                        (self.migration,))
                self._q("SELECT pg_advisory_unlock(%s::int, %s::int)", (self.NAMESPACE, self.key))
        except psycopg.Error:
            pass  # the session is gone, and the lock with it
