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

import time
from dataclasses import dataclass, field

import psycopg

from reshard.config import Config
from reshard.control.store import MigrationRecord, connect
from reshard.errors import WaitTimeout
from reshard.kafka_admin import KafkaAdmin


def applier_group(migration: str) -> str:
    return f"reshard-{migration}-applier"


@dataclass
class SourceLag:
    cluster: str
    slot: str
    active: bool
    lag_bytes: int | None  # WAL written but not yet confirmed by Debezium
    retained_bytes: int | None  # WAL the slot keeps on disk


@dataclass
class Lag:
    records: int  # Kafka records not yet applied
    sources: list[SourceLag] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"records": self.records, "sources": [s.__dict__ for s in self.sources]}


def slot_lag(config: Config, rec: MigrationRecord) -> list[SourceLag]:
    out = []
    for s in rec.sources:
        with connect(config.cluster(s["cluster"]).dsn, f"source cluster {s['cluster']}") as conn:
            row = conn.execute(
                "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (s["slot_name"],),
            ).fetchone()
        if row is None:
            out.append(SourceLag(s["cluster"], s["slot_name"], False, None, None))
        else:
            out.append(SourceLag(s["cluster"], s["slot_name"], bool(row[0]), row[1], row[2]))
    return out


def lag(config: Config, rec: MigrationRecord, topics: list[str]) -> Lag:
    admin = KafkaAdmin(config.kafka.bootstrap_servers)
    return Lag(admin.lag(applier_group(rec.name), topics), slot_lag(config, rec))


def mark_positions(config: Config, rec: MigrationRecord) -> dict[str, str]:
    """Step 1: X per source, then a heartbeat commit after it."""
    positions = {}
    for s in rec.sources:
        with connect(config.cluster(s["cluster"]).dsn, f"source cluster {s['cluster']}", autocommit=True) as conn:
            positions[s["cluster"]] = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            conn.execute(
                "UPDATE reshard.heartbeat SET beat = beat + 1, at = now() WHERE migration = %s", (rec.name,)
            )
    return positions


def wait_confirmed(config: Config, rec: MigrationRecord, positions: dict[str, str], deadline: float) -> None:
    """Step 2: every slot confirmed its X."""
    slots = {s["cluster"]: s["slot_name"] for s in rec.sources}
    pending = dict(positions)
    conns: dict[str, psycopg.Connection] = {}
    try:
        while pending:
            for cluster, x in list(pending.items()):
                conn = conns.get(cluster) or connect(config.cluster(cluster).dsn, f"source cluster {cluster}",
                                                     autocommit=True)
                conns[cluster] = conn
                ok = conn.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    (x, slots[cluster]),
                ).fetchone()
                if ok and ok[0]:
                    del pending[cluster]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise WaitTimeout(
                    f"Debezium has not confirmed position(s) {pending} on the slot(s) in time; "
                    "is the connector running? (reshard status)"
                )
            time.sleep(0.05)
    finally:
        for c in conns.values():
            c.close()


def wait_applied(admin: KafkaAdmin, group: str, topics: list[str], deadline: float) -> dict[tuple[str, int], int]:
    """Step 3: the applier's committed offsets reach the end offsets read now."""
    ends = admin.end_offsets(topics)
    while True:
        done = admin.committed(group, topics)
        behind = {tp: end for tp, end in ends.items() if done.get(tp, 0) < end}
        if not behind:
            return ends
        if time.monotonic() > deadline:
            left = sum(end - done.get(tp, 0) for tp, end in behind.items())
            raise WaitTimeout(f"the applier is still {left} record(s) behind; is it running? (reshard status)")
        time.sleep(0.05)


@dataclass
class CaughtUp:
    positions: dict[str, str]
    end_offsets: dict[tuple[str, int], int]
    seconds: float

    def to_dict(self) -> dict:
        return {
            "positions": self.positions,
            "records_through": sum(self.end_offsets.values()),
            "seconds": round(self.seconds, 3),
        }


def wait_caught_up(config: Config, rec: MigrationRecord, topics: list[str], timeout: float) -> CaughtUp:
    """All three steps: on return, every change committed on every source before the
    returned positions is applied on its target."""
    started = time.monotonic()
    deadline = started + timeout
    positions = mark_positions(config, rec)
    wait_confirmed(config, rec, positions, deadline)
    ends = wait_applied(KafkaAdmin(config.kafka.bootstrap_servers), applier_group(rec.name), topics, deadline)
    return CaughtUp(positions, ends, time.monotonic() - started)
