"""Publications and replication slots on a source, and the snapshot a slot exports."""

from __future__ import annotations

import re

import psycopg

from reshard.config import ClusterConfig
from reshard.control.store import connect
from reshard.shardmap import qualified

HEARTBEAT_TABLE = "reshard.heartbeat"
_SAFE = re.compile(r"^[a-z0-9_]+$")


def names(migration: str, source: str) -> tuple[str, str]:
    """(slot, publication) names; both are plain identifiers (checked config names)."""
    name = f"reshard_{migration}_{source}"
    assert _SAFE.match(name), name
    return name, name


def ensure_publication(conn: psycopg.Connection, publication: str, tables: list[str]) -> None:
    """Create the publication for the moving tables plus reshard's heartbeat table.

    It must exist before the slot: pgoutput resolves publications with the catalog as
    of the WAL position it decodes, so a publication created after the slot's
    consistent point would be invisible to the changes right after it.
    """
    wanted = [qualified(t) for t in tables] + [qualified(HEARTBEAT_TABLE)]
    row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    if row is None:
        conn.execute(f"CREATE PUBLICATION {publication} FOR TABLE {', '.join(wanted)}")


def slot_exists(conn: psycopg.Connection, slot: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() is not None


class ExportedSnapshot:
    """A logical slot created with ``SNAPSHOT 'export'`` and the snapshot it exported.

    The snapshot stays importable only while the replication connection that created
    it is open and idle, so this object keeps it open until ``close()``. The snapshot
    shows exactly the transactions that committed before ``lsn`` (the consistent
    point), and decoding from the slot yields exactly those committed after it.

    ``temporary=True`` makes a throwaway slot, used only to obtain a fresh consistent
    snapshot with a known position when a copy resumes after its first snapshot died.
    """

    def __init__(self, cluster: ClusterConfig, slot: str, temporary: bool = False):
        self.cluster = cluster
        self.slot = slot
        self.conn = connect(cluster.replication_dsn(), f"cluster {cluster.name} (replication)", autocommit=True)
        kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
        row = self.conn.execute(f"CREATE_REPLICATION_SLOT {slot} {kind} pgoutput (SNAPSHOT 'export')").fetchone()
        assert row is not None
        _slot, self.lsn, self.snapshot_name, _plugin = row

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ExportedSnapshot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_snapshot(conn: psycopg.Connection, snapshot_name: str) -> None:
    """Start a read-only transaction that sees exactly the exported snapshot."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_name}'")


def drop_slot(conn: psycopg.Connection, slot: str) -> bool:
    """Drop the slot if it exists and is not in use. Returns whether it was dropped."""
    row = conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
        (slot,),
    ).fetchone()
    return row is not None
