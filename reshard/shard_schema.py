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
