"""Lag, and the proof that the targets hold every change committed before a position.

The proof (used by ``reshard wait``, the demo, and later the cutover drain) has
three steps, each waiting on a durable fact rather than on time:

1. On each source read X = pg_current_wal_lsn(), then commit a write to the
   migration's heartbeat row, so a published transaction commits after X.
2. Wait until the slot's confirmed_flush_lsn >= X. Debezium confirms a position
   only after Kafka Connect committed the source offsets up to it, and Connect
   commits only offsets of records Kafka acknowledged, in order. Decoding is in
   commit order, so every change committed before X is now durably in Kafka,
   on whatever partition.
3. Only then read the end offset of every partition of the migration's topics,
   and wait until the applier's committed offsets reach them. The applier commits
   an offset only after the target transactions holding its effects committed.

Reading the end offsets before step 2 would be wrong: a record for a change before
X could still be in flight to another partition.
"""

from __future__ import annotations

import logging
import statistics
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control import states
from reshard.control.store import ControlStore
from reshard.errors import MigrationError, ReshardError, StreamLost, WaitTimeout
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import Direction, Stream, streams_of
from reshard.proof.lineage import require_intact
from reshard.retry import poll

log = logging.getLogger("reshard.proof.catchup")
SAY_EVERY_S = 5.0  # a wait says what it waits for this often


def applier_group(migration: str) -> str:
    return f"reshard-{migration}-applier"


@dataclass
class StreamLag:
    stream: str
    cluster: str
    slot: str
    active: bool
    lag_bytes: int | None  # WAL written but not yet confirmed by Debezium
    retained_bytes: int | None  # WAL the slot keeps on disk
    keep_limit_bytes: int | None = None  # max_slot_wal_keep_size: past it PostgreSQL invalidates the slot


@dataclass
class Lag:
    records: int  # Kafka records not yet applied
    streams: list[StreamLag] = field(default_factory=list)
    topics: dict[str, int] = field(default_factory=dict)  # records not yet applied, per topic

    def to_dict(self) -> dict:
        return asdict(self)


def slot_lag(config: Config, streams: list[Stream]) -> list[StreamLag]:
    out = []
    for s in streams:
        with connect(config.cluster(s.cluster).dsn, f"cluster {s.cluster}") as conn:
            row = conn.execute(
                "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
                "(SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size') "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (s.slot,),
            ).fetchone()
        name = f"{s.direction}:{s.cluster}"
        if row is None:
            out.append(StreamLag(name, s.cluster, s.slot, False, None, None))
        else:
            keep = int(row[3]) * (1 << 20) if int(row[3]) >= 0 else None  # in MB; -1: no limit
            out.append(StreamLag(name, s.cluster, s.slot, bool(row[0]), row[1], row[2], keep))
    return out


def topic_lag(config: Config, migration: str, topics: list[str]) -> dict[str, int]:
    """Records after the appliers' committed offsets, per topic (Kafka only)."""
    with KafkaAdmin(config.kafka) as admin:
        per_partition = admin.partition_lag(applier_group(migration), topics)
    out = {t: 0 for t in topics}
    for (t, _p), n in per_partition.items():
        out[t] += n
    return out


def lag(config: Config, migration: str, streams: list[Stream], topics: list[str]) -> Lag:
    per_topic = topic_lag(config, migration, topics)
    return Lag(sum(per_topic.values()), slot_lag(config, streams), per_topic)


def _conn(config: Config, conns: dict[str, psycopg.Connection[Any]], cluster: str) -> psycopg.Connection[Any]:
    conn = conns.get(cluster)
    if conn is None or conn.closed:
        conn = conns[cluster] = connect(config.cluster(cluster).dsn, f"cluster {cluster}", autocommit=True)
    return conn


def mark_positions(config: Config, migration: str, streams: list[Stream],
                   conns: dict[str, psycopg.Connection[Any]] | None = None) -> dict[Stream, str]:
    """Step 1: X per stream's cluster, then a heartbeat commit after it. ``conns`` (cluster ->
    autocommit connection) lets a cutover reuse the connections it holds open."""
    positions = {}
    own = conns is None
    conns = {} if conns is None else conns
    try:
        for s in streams:
            conn = _conn(config, conns, s.cluster)
            positions[s] = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            conn.execute("UPDATE reshard.heartbeat SET beat = beat + 1, at = now() WHERE migration = %s", (migration,))
    finally:
        if own:
            for c in conns.values():
                c.close()
    return positions


def confirm_delay(config: Config, migration: str, streams: list[Stream], samples: int = 5,
                  limit_s: float = 5.0) -> dict[str, float | None]:
    """Per stream's cluster: how long its connector takes to confirm a heartbeat committed now
    (ms, median of ``samples``; None when one took over ``limit_s``). A cutover's drain waits at
    least this long inside the write pause; it is set by the Connect worker's
    ``offset.flush.interval.ms``, which Connect's REST API does not show, so it is measured."""
    conns: dict[str, psycopg.Connection[Any]] = {}
    out: dict[str, float | None] = {}
    try:
        for s in streams:
            took: list[float] = []
            for _ in range(samples):
                start = time.monotonic()
                x = mark_positions(config, migration, [s], conns)
                try:
                    wait_confirmed(config, x, start + limit_s, conns, interval=0.005)
                except WaitTimeout:
                    break
                took.append((time.monotonic() - start) * 1000)
            out[s.cluster] = round(statistics.median(took), 1) if len(took) == samples else None
    finally:
        for c in conns.values():
            c.close()
    return out


def wait_confirmed(config: Config, positions: dict[Stream, str], deadline: float,
                   conns: dict[str, psycopg.Connection[Any]] | None = None, interval: float = 0.02) -> None:
    """Step 2: every stream's slot confirmed its X (looked at every ``interval`` seconds: a
    cutover's drain, inside the write pause, looks more often)."""
    pending = dict(positions)
    own = conns is None
    conns = {} if conns is None else conns

    def confirmed() -> bool:
        for s, x in list(pending.items()):
            ok = _conn(config, conns, s.cluster).execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                (x, s.slot),
            ).fetchone()
            if ok is None:
                raise StreamLost(
                    f"replication slot {s.slot} on {s.cluster} is gone: the stream lost its position and "
                    "cannot prove catch-up; see the source failover runbook (docs/runbook/source-failover.md)")
            if ok[0]:
                del pending[s]
        return not pending
    try:
        poll(confirmed, timeout=deadline - time.monotonic(), interval=interval, what="Debezium's confirmations")
    except WaitTimeout:
        seen = "; ".join(_unconfirmed(config, conns, s, x) for s, x in pending.items())
        raise WaitTimeout(f"Debezium has not confirmed in time: {seen} (reshard status)") from None
    finally:
        if own:
            for c in conns.values():
                c.close()


def _unconfirmed(config: Config, conns: dict[str, psycopg.Connection[Any]], stream: Stream, x: str) -> str:
    """What a stream that did not confirm ``x`` looks like now: its slot's confirmed position,
    whether a consumer holds the slot, and the connector's task (a RUNNING task holding the
    slot without confirming is stalled; a FAILED one says why)."""
    said = f"slot {stream.slot} on {stream.cluster} needed {x}"
    try:
        row = _conn(config, conns, stream.cluster).execute(
            "SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots WHERE slot_name = %s",
            (stream.slot,)).fetchone()
        if row is not None:
            said += f", confirmed {row[0]}, " + (f"held by pid {row[1]}" if row[1] else "no consumer connected")
    except psycopg.Error as exc:
        said += f" (the slot could not be read: {str(exc).strip().splitlines()[0]})"
    try:
        status = ConnectClient(config.connect, timeout=5.0).status(stream.connector)
    except ReshardError as exc:
        return f"{said}; connector {stream.connector}: Connect did not answer ({exc})"
    if status is None:
        return f"{said}; connector {stream.connector} is not registered"
    tasks = status.get("tasks") or []
    states = ", ".join(t.get("state", "?") for t in tasks) or "no task"
    trace = next((t.get("trace", "") for t in tasks if t.get("state") == "FAILED"), "")
    return (f"{said}; connector {stream.connector} {status.get('connector', {}).get('state', '?')}, task {states}"
            + (f": {trace.strip().splitlines()[0]}" if trace.strip() else ""))


def wait_applied(admin: KafkaAdmin, group: str, topics: list[str], deadline: float,
                 interval: float = 0.02) -> dict[tuple[str, int], int]:
    """Step 3: the applier's committed offsets reach the end offsets read now."""
    ends = admin.end_offsets(topics)
    said = time.monotonic()
    behind_by = 0

    def reached() -> bool:
        nonlocal said, behind_by
        # a slow answer must not carry the caller past its deadline (the write pause)
        done = admin.committed(group, topics, timeout=max(0.05, deadline - time.monotonic()))
        behind = {tp: end for tp, end in ends.items() if done.get(tp, 0) < end}
        behind_by = sum(end - done.get(tp, 0) for tp, end in behind.items())
        if behind and time.monotonic() - said >= SAY_EVERY_S:
            said = time.monotonic()
            log.info("waiting for the appliers (group %s) to reach the end offsets read at the start: %d record(s) "
                     "behind on %d partition(s), %.0fs left", group, behind_by, len(behind), max(0.0, deadline - said))
        return not behind
    try:
        poll(reached, timeout=deadline - time.monotonic(), interval=interval, what="the appliers' offsets")
    except FutureTimeout:
        raise WaitTimeout(f"Kafka did not say the group {group}'s offsets before the deadline") from None
    except WaitTimeout:
        raise WaitTimeout(f"the applier is still {behind_by} record(s) behind; is it running? (reshard status)") from None
    return ends


@dataclass
class CaughtUp:
    positions: dict[str, str]
    end_offsets: dict[tuple[str, int], int]
    seconds: float
    confirm_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "positions": self.positions,
            "records_through": sum(self.end_offsets.values()),
            "seconds": round(self.seconds, 3),
            "confirm_seconds": round(self.confirm_seconds, 3),
        }


def wait_caught_up(config: Config, migration: str, streams: list[Stream], topics: list[str],
                   timeout: float = 300.0, deadline: float | None = None) -> CaughtUp:
    """All three steps: on return, every change committed on every stream's cluster before
    the returned positions is applied at its destination."""
    started = time.monotonic()
    deadline = deadline if deadline is not None else started + timeout
    positions = mark_positions(config, migration, streams)
    wait_confirmed(config, positions, deadline)
    confirmed = time.monotonic()
    with KafkaAdmin(config.kafka) as admin:
        ends = wait_applied(admin, applier_group(migration), topics, deadline)
    return CaughtUp({f"{s.direction}:{s.cluster}": x for s, x in positions.items()}, ends,
                    time.monotonic() - started, confirmed - started)


def prove_caught_up(config: Config, store: ControlStore, migration: str, timeout: float = 300.0) -> CaughtUp:
    """Prove every change committed so far on the migration's live streams, either way, is
    applied, and record the proof. The one door for ``reshard wait``, the demo and the
    router's shadow reads (which must not load the coordinator to ask for it)."""
    rec = store.migration(migration)
    if rec.state not in states.FLOWING:
        raise MigrationError(f"migration {migration} is {rec.state}; nothing is streaming")
    plan = store.plan_of(rec)
    # reverse streams stopped by a cutover attempt that backed out carry nothing but
    # echoes (no wave is cut): there is nothing of theirs to catch up with
    client = ConnectClient(config.connect)
    live = [s for s in streams_of(store, rec, plan) if s.direction == Direction.FORWARD or not client.stopped(s.connector)]
    topics = sorted(s.topic(t) for s in live for t in plan.tables())
    require_intact(config, store, migration, live)  # a slot a failover lost confirms nothing of the stream's
    proof = wait_caught_up(config, migration, live, topics, timeout)
    store.record_event(migration, "catchup.proved", **proof.to_dict())
    return proof
