"""The slot that exports the snapshot the copy runs in."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from reshard.cluster import features
from reshard.cluster.failover import Origin
from reshard.cluster.session import connect
from reshard.config import ClusterConfig


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
        # the system and timeline the slot is made on (failover.py), asked first: any command
        # after CREATE_REPLICATION_SLOT on this connection would end the exported snapshot
        ident = self.conn.execute("IDENTIFY_SYSTEM").fetchone()
        assert ident is not None
        self.origin = Origin(str(ident[0]), int(ident[1]))
        # a failover slot (17+) follows a promoted standby; a temporary one cannot be one
        failover = ", FAILOVER true" if not temporary and features.failover_slots(self.conn) else ""
        row = self.conn.execute(sql.SQL("CREATE_REPLICATION_SLOT {} {} pgoutput (SNAPSHOT 'export'{})").format(
            sql.Identifier(slot), sql.SQL(kind), sql.SQL(failover))).fetchone()
        assert row is not None
        _slot, self.lsn, self.snapshot_name, _plugin = row

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ExportedSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_snapshot(conn: psycopg.Connection[Any], snapshot_name: str) -> None:
    """Start a read-only transaction that sees exactly the exported snapshot."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
