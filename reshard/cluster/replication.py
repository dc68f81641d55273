"""Publications and logical replication slots reshard creates on a cluster.

The publication must exist before its slot: pgoutput resolves publications with the
catalog as of the WAL position it decodes, so a publication created after the slot's
consistent point would be invisible to the changes right after it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg import sql

from reshard.cluster import features
from reshard.errors import MigrationError, WaitTimeout
from reshard.maps.shardmap import table_ident
from reshard.retry import poll

HEARTBEAT_TABLE = "reshard.heartbeat"


def ensure_publication(conn: psycopg.Connection[Any], publication: str, tables: list[str]) -> None:
    """The moving tables plus reshard's heartbeat table (for catch-up proofs)."""
    wanted = [table_ident(t) for t in [*tables, HEARTBEAT_TABLE]]
    row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    if row is None:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(publication),
                                                                          sql.SQL(", ").join(wanted)))


def drop_publication(conn: psycopg.Connection[Any], publication: str) -> bool:
    if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone() is None:
        return False
    conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
    return True


def slot_lsn(conn: psycopg.Connection[Any], slot: str) -> str | None:
    """The slot's confirmed_flush_lsn, or None when there is no such slot."""
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    return row[0] if row else None


def create_slot(conn: psycopg.Connection[Any], slot: str) -> str:
    """A logical slot (pgoutput) from the current position, a failover slot where the server
    has them (features.py); returns its LSN. Idempotent."""
    existing = slot_lsn(conn, slot)
    if existing is not None:
        return existing
    if features.failover_slots(conn):  # (slot, plugin, temporary, two-phase, failover)
        return conn.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput', false, false, "
                            "true)", (slot,)).fetchone()[0]
    return conn.execute(
        "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
    ).fetchone()[0]


def slot_active(conn: psycopg.Connection[Any], slot: str) -> bool | None:
    """Whether a consumer holds the slot now (None: there is no such slot)."""
    row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return None if row is None else bool(row[0])


def advance_slot(conn: psycopg.Connection[Any], slot: str, wait_s: float = 30.0) -> tuple[str, int]:
    """Move the slot's confirmed position to the current WAL position, once its consumer let
    go of it; returns (the new position, bytes skipped). Only for WAL known to hold nothing
    the stream must carry."""
    try:
        poll(lambda: not slot_active(conn, slot), timeout=wait_s, interval=0.1, what=f"replication slot {slot} let go")
    except WaitTimeout:
        raise MigrationError(f"replication slot {slot} is still in use after {wait_s:.0f}s") from None
    before = slot_lsn(conn, slot)
    end = conn.execute("SELECT end_lsn::text FROM pg_replication_slot_advance(%s, pg_current_wal_lsn())",
                       (slot,)).fetchone()[0]
    skipped = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", (end, before)).fetchone()[0]
    return end, int(skipped or 0)


def drop_slot(conn: psycopg.Connection[Any], slot: str, wait_s: float = 10.0) -> bool:
    """Drop the slot once its consumer let go of it. Returns whether it was dropped."""
    if slot_active(conn, slot) is None:
        return False
    with contextlib.suppress(WaitTimeout):  # still in use: the drop below does nothing
        poll(lambda: slot_active(conn, slot) is not True, timeout=wait_s, interval=0.1, what=f"replication slot {slot} let go")
    row = conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
        (slot,),
    ).fetchone()
    return row is not None
