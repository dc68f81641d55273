"""Install reshard's bookkeeping schema and helper functions on a shard cluster."""

from __future__ import annotations

from importlib import resources

import psycopg

from reshard.keyhash import HASH_COMBINE64_SQL


def install(conn: psycopg.Connection) -> None:
    """Idempotent. Serialized by an advisory lock: CREATE … IF NOT EXISTS is not
    race-free when two reshard processes install at the same moment."""
    sql = resources.files("reshard.shard_sql").joinpath("shard.sql").read_text()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7265736861726401)")
        conn.execute(sql)
        conn.execute(HASH_COMBINE64_SQL)


WRITER_GUC = "reshard.writer"


def writer_session(conn: psycopg.Connection) -> None:
    """Make this session write the way reshard's copy and applier must write.

    ``session_replication_role = replica`` keeps FK checks and ordinary triggers off,
    as in logical replication, so rows of a table group may arrive in any order.
    ``reshard.writer`` marks the session for reshard's own fence trigger (ENABLE
    ALWAYS), which lets it through and stops everyone else.
    """
    conn.execute("SET session_replication_role = replica")
    conn.execute(f"SET {WRITER_GUC} = 'applier'")


def forget(conn: psycopg.Connection, migration: str) -> list[str]:
    """Drop this cluster's bookkeeping of a migration: positions, offsets, copy cursors,
    its heartbeat row and the replication origins its appliers used."""
    dropped = []
    if conn.execute("SELECT to_regclass('reshard.applied_rows')").fetchone()[0]:
        for t in ("applied_rows", "applied_offsets", "copy_cursor"):
            conn.execute(f"DELETE FROM reshard.{t} WHERE migration IN (%s, %s)", (migration, f"{migration}:rev"))
        conn.execute("DELETE FROM reshard.heartbeat WHERE migration = %s", (migration,))
    for (origin,) in conn.execute(
        "SELECT roname FROM pg_replication_origin WHERE roname LIKE %s OR roname LIKE %s",
        (f"reshard_fwd_{migration}_%", f"reshard_rev_{migration}_%"),
    ).fetchall():
        try:
            conn.execute("SELECT pg_replication_origin_drop(%s)", (origin,))
            dropped.append(origin)
        except psycopg.errors.ObjectInUse:
            pass  # an applier still holds it; the next cleanup drops it
    return dropped
