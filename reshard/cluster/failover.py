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
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reshard.cluster import features
from reshard.cluster.session import connect
from reshard.config import ClusterConfig
from reshard.errors import ReshardError


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


@dataclass(frozen=True)
class Standby:
    """A standby the cluster's DSN lists, and what it lacks to carry reshard's slots through a
    promotion (empty: ready); ``synced`` says which of the slots asked about it holds now, ready
    to survive a promotion."""

    host: str
    port: str
    missing: list[str]
    synced: dict[str, bool]


def standbys(cluster: ClusterConfig, primary: Primary, primary_conn: psycopg.Connection[Any],
             slots: list[str]) -> list[Standby]:
    """Every other host of the DSN, checked for what a failover slot needs (17+): that it is a
    standby of this primary, synchronizes slots, sends feedback and streams through a physical
    slot the primary's logical walsenders wait for (``synchronized_standby_slots``)."""
    out = []
    waits_for = {s.strip() for s in _setting(primary_conn, "synchronized_standby_slots").split(",") if s.strip()}
    for i, (host, port) in enumerate(cluster.hosts()):
        if i == primary.index:
            continue
        dsn = make_conninfo(cluster.dsn, host=host, port=port, target_session_attrs="any", connect_timeout="5")
        try:
            with connect(dsn, f"cluster {cluster.name}'s standby {host}:{port}", autocommit=True) as conn:
                out.append(_standby(conn, host, port, primary, waits_for, slots))
        except ReshardError as exc:
            out.append(Standby(host, port, [str(exc)], {}))
    return out


def _standby(conn: psycopg.Connection[Any], host: str, port: str, primary: Primary, waits_for: set[str],
             slots: list[str]) -> Standby:
    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        return Standby(host, port, ["it is not a standby (not in recovery): a second primary?"], {})
    if features.major(conn) < features.FAILOVER_SLOTS:
        return Standby(host, port, [f"PostgreSQL {features.major(conn)} has no slot synchronization (17+): a "
                                    "promotion of this standby loses the migration's streams"], {})
    missing = []
    if _setting(conn, "sync_replication_slots") != "on":
        missing.append("sync_replication_slots = on")
    if _setting(conn, "hot_standby_feedback") != "on":
        missing.append("hot_standby_feedback = on")
    physical = _setting(conn, "primary_slot_name")
    if not physical:
        missing.append("primary_slot_name (a physical slot on the primary)")
    elif physical not in waits_for:
        missing.append(f"on the primary: synchronized_standby_slots to include '{physical}' (else a failover slot "
                       "may confirm changes this standby has not received)")
    conninfo = _setting(conn, "primary_conninfo")
    if conninfo and "dbname" not in conninfo_to_dict(conninfo):
        missing.append("dbname in primary_conninfo (the slot sync worker connects to a database)")
    # a synchronized slot that is still temporary has not caught up with the primary's yet: a
    # promotion drops it
    rows = conn.execute("SELECT slot_name, synced AND NOT temporary FROM pg_replication_slots "
                        "WHERE slot_name = ANY(%s)", (slots,))
    have = {r[0]: bool(r[1]) for r in rows}
    return Standby(host, port, missing, {s: have.get(s, False) for s in slots})


def _setting(conn: psycopg.Connection[Any], name: str) -> str:
    """A setting's value ("" when the server has no such setting or hides it from this role)."""
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,)).fetchone()
    return str(row[0]) if row and row[0] is not None else ""
