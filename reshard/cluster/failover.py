"""Where a cluster's primary is now, and whether a stream's slot survived the primary's last move.

A cluster's DSN may list its primary and its standbys (``host=a,b port=5432,5432
target_session_attrs=read-write``, the ordinary libpq way): reshard's own sessions then
reach whichever is the primary, but Debezium's ``database.hostname`` takes one host, so
reshard finds the primary (``locate``) and points the connector at it.

A promotion starts a new timeline. A slot made on an earlier timeline is still the one
reshard made only if it came over with the promotion: on 17+ a failover slot that the
standby synchronized (``failover`` and, left over from the standby, ``synced``); on 15 and
16 never (a slot lives on its primary only). ``judge`` tells the three cases apart from
the slot's origin (the system and timeline it was made on, recorded at creation), the
primary now, and the slot's row there. A slot missing, or made anew (by a consumer that
found none), lost the changes in between: the stream can no longer prove catch-up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import psycopg

from reshard.cluster import features
from reshard.cluster.session import connect
from reshard.config import ClusterConfig


class Lineage(enum.StrEnum):
    SAME = "same"  # the slot lives on the primary it was made on
    CARRIED = "carried"  # the primary failed over and the slot came with it (17+)
    LOST = "lost"  # the slot is gone, or was made anew: changes in between are lost


@dataclass(frozen=True)
class Origin:
    """What a slot was made on: the cluster's system identifier and the primary's timeline."""

    system_id: str
    timeline: int


@dataclass(frozen=True)
class Primary:
    host: str
    port: str
    index: int  # its place among the DSN's hosts
    origin: Origin  # the system and timeline it writes now
    major: int


@dataclass(frozen=True)
class SlotRow:
    failover: bool  # a failover slot (always False before 17)
    synced: bool  # synchronized from a former primary (on a primary: left over from a promotion)


def origin(conn: psycopg.Connection[Any]) -> Origin:
    """The system and timeline of a primary (the timeline of the WAL it writes now: a promoted
    standby's first checkpoint on its new timeline may not have happened yet)."""
    row = conn.execute("SELECT system_identifier::text, pg_walfile_name(pg_current_wal_lsn()) "
                       "FROM pg_control_system()").fetchone()
    assert row is not None
    return Origin(row[0], int(row[1][:8], 16))


def slot_row(conn: psycopg.Connection[Any], slot: str) -> SlotRow | None:
    if features.failover_slots(conn):
        row = conn.execute("SELECT failover, synced FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        return None if row is None else SlotRow(bool(row[0]), bool(row[1]))
    row = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return None if row is None else SlotRow(False, False)


def locate(cluster: ClusterConfig, conn: psycopg.Connection[Any] | None = None) -> Primary:
    """The cluster's primary now (through ``conn`` if given, a session on ``cluster.dsn``)."""
    own = conn is None
    session = conn or connect(cluster.dsn, f"cluster {cluster.name}", autocommit=True)
    try:
        host, port = session.info.host, str(session.info.port)
        index = next((i for i, hp in enumerate(cluster.hosts()) if hp == (host, port)), 0)
        return Primary(host, port, index, origin(session), features.major(session))
    finally:
        if own:
            session.close()


def connect_address(cluster: ClusterConfig, primary: Primary) -> tuple[str, str]:
    """Where Debezium reaches that primary: the host at the same place in ``connect_dsn``
    when it lists as many, else its one host (a name that follows the primary)."""
    listed = cluster.hosts(for_connect=True)
    return listed[primary.index] if len(listed) > 1 else listed[0]


def judge(made_on: Origin | None, now: Primary, slot: SlotRow | None) -> tuple[Lineage, str]:
    """Whether the stream's slot on the primary ``now`` is still the one made on ``made_on``,
    and why (``made_on`` None: nothing was recorded, the slot is taken as it is)."""
    where = f"{now.host}:{now.port}"
    if made_on is not None and made_on.system_id != now.origin.system_id:
        return Lineage.LOST, (f"{where} is another cluster (system {now.origin.system_id}, the slot was made on "
                              f"{made_on.system_id})")
    if made_on is None or made_on.timeline == now.origin.timeline:
        if slot is None:
            return Lineage.LOST, f"the slot is not on the primary {where}: it was dropped"
        return Lineage.SAME, "the slot is on the primary it was made on"
    moved = f"the primary moved from timeline {made_on.timeline} to {now.origin.timeline} ({where})"
    if now.major < features.FAILOVER_SLOTS:
        return Lineage.LOST, (f"{moved}; PostgreSQL {now.major} keeps a logical slot on its primary only, so the "
                              "stream's position did not come over")
    if slot is None:
        return Lineage.LOST, (f"{moved}, and the slot is not there: the standby had not synchronized it "
                              "(see `reshard status` for the standby's slot sync)")
    if slot.failover and slot.synced:
        return Lineage.CARRIED, f"{moved}, and the standby had synchronized the slot"
    return Lineage.LOST, (f"{moved}; the slot there was not synchronized from the old primary (made anew), so the "
                          "changes in between are not in it")
