"""Whether each stream's slot is still the one reshard made, after whatever failovers happened.

A catch-up proof reads a slot's confirmed position: that means something only while the
slot is the stream's own. ``assess`` asks each stream's cluster where its primary is now and
judges the slot there (reshard/cluster/failover.py), and records what it found: the origin
of a slot made before origins were recorded, the new timeline of a slot a failover carried,
and a lost stream, for good (audited, the migration's error set, its connector paused so it
cannot start a new slot from a later position that would hide the loss). ``reshard wait``,
the cutover's gates and the applier's failover watch all go through it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from reshard.cluster import failover
from reshard.cluster.failover import Lineage, Primary
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.store import ControlStore
from reshard.errors import ReshardError, StreamLost
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import Stream

log = logging.getLogger("reshard.proof.lineage")
CONNECT_TIMEOUT_S = "5"


@dataclass(frozen=True)
class Assessment:
    stream: Stream
    lineage: Lineage | None  # None: the cluster could not be reached now
    why: str
    primary: Primary | None = None


def assess(config: Config, store: ControlStore, migration: str, streams: list[Stream],
           conns: dict[str, psycopg.Connection[Any]] | None = None) -> list[Assessment]:
    """Judge every stream's slot on its cluster's primary now, and record the outcome.
    ``conns`` (cluster -> autocommit session) lets a caller that asks often keep them open."""
    origins = store.slot_origins(migration)
    own = conns is None
    conns = {} if conns is None else conns
    out = []
    try:
        for stream in streams:
            recorded = origins.get(stream.slot)
            if recorded is not None and recorded["lineage"] == Lineage.LOST:
                out.append(Assessment(stream, Lineage.LOST, recorded["why"] or "lost"))
                continue
            try:
                primary, slot = _ask(config, conns, stream)
            except (ReshardError, psycopg.Error) as exc:
                out.append(Assessment(stream, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
                continue
            if recorded is None:
                if slot is None:  # no origin and no slot: dropped by reshard (abort, rollback), or never made
                    out.append(Assessment(stream, None, "no slot and no record of one", primary))
                    continue
                # a slot made before reshard recorded origins: taken as it is
                store.record_slot_origin(migration, stream.cluster, stream.slot, primary.origin.system_id,
                                         primary.origin.timeline)
            made_on = failover.Origin(recorded["system_id"], recorded["timeline"]) if recorded else None
            lineage, why = failover.judge(made_on, primary, slot)
            if lineage == Lineage.CARRIED:
                log.warning("stream %s: %s; following it", stream.slot, why)
                store.note_slot(migration, stream.slot, Lineage.CARRIED, why, timeline=primary.origin.timeline)
            elif lineage == Lineage.LOST and not _lost(config, store, migration, stream, why):
                out.append(Assessment(stream, None, "dropped by reshard meanwhile", primary))
                continue
            out.append(Assessment(stream, lineage, why, primary))
    finally:
        if own:
            for c in conns.values():
                c.close()
    return out


def require_intact(config: Config, store: ControlStore, migration: str, streams: list[Stream]) -> None:
    """Raise StreamLost if any stream's slot was lost (a cluster unreachable now is left to
    the wait that follows, which cannot pass without it)."""
    lost = [a for a in assess(config, store, migration, streams) if a.lineage == Lineage.LOST]
    if lost:
        raise StreamLost("; ".join(_message(a.stream, a.why) for a in lost))


def _message(stream: Stream, why: str) -> str:
    return (f"the {stream.direction} stream of {stream.cluster} (slot {stream.slot}) lost its position ({why}): it cannot prove "
            "catch-up; see the source failover runbook (docs/runbook/source-failover.md)")


def _ask(config: Config, conns: dict[str, psycopg.Connection[Any]], stream: Stream
         ) -> tuple[Primary, failover.SlotRow | None]:
    """The primary now and the slot's row there; a kept session that broke (its server went
    away in a failover) is replaced once at once, reaching whichever host is the primary now."""
    for attempt in (1, 2):
        fresh = stream.cluster not in conns
        try:
            conn = _conn(config, conns, stream.cluster)
            return failover.locate(config.cluster(stream.cluster), conn), failover.slot_row(conn, stream.slot)
        except (ReshardError, psycopg.Error):
            with contextlib.suppress(Exception):
                conns.pop(stream.cluster).close()
            if fresh or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _conn(config: Config, conns: dict[str, psycopg.Connection[Any]], cluster: str) -> psycopg.Connection[Any]:
    conn = conns.get(cluster)
    if conn is None or conn.closed or conn.broken:
        dsn = psycopg.conninfo.make_conninfo(config.cluster(cluster).dsn, connect_timeout=CONNECT_TIMEOUT_S)
        conn = conns[cluster] = connect(dsn, f"cluster {cluster}", autocommit=True)
    return conn


def _lost(config: Config, store: ControlStore, migration: str, stream: Stream, why: str) -> bool:
    """Record the loss; False when there is nothing to record (reshard dropped the slot itself
    between the two reads: its origin is gone)."""
    if not store.note_slot(migration, stream.slot, Lineage.LOST, why):
        return False
    message = _message(stream, why)
    log.error("stream %s: %s", stream.slot, message)
    store.set_error(migration, message)
    with contextlib.suppress(ReshardError):
        ConnectClient(config.connect, timeout=10.0).pause(stream.connector)
    return True
