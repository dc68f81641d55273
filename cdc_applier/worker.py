"""The applier: one member of the migration's consumer group.

Loop: poll a batch, decode and route each record, apply each target's share in one
target transaction (rows + per-key positions + offsets), send what could not be
applied to the dead-letter topic and flush it, and only then commit the batch's
offsets to Kafka. A crash anywhere replays from the last Kafka commit, and the
per-key positions make the replay a no-op. More members of the same group split
the partitions between them.

It stops on input it will not guess about (schema drift, a TRUNCATE, a partial
update of a missing row) with ``MigrationPaused``/``SchemaMismatch``, before writing
any of that batch, and records the reason in the control database.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from reshard import shard_schema
from reshard.catalog import require_table
from reshard.config import Config
from reshard.control.store import ControlStore, MigrationRecord, connect
from reshard.errors import MigrationPaused, ReshardError, SchemaMismatch, Unavailable
from reshard.kafka_admin import client_conf
from reshard.planner import Plan
from reshard.progress import Task
from cdc_applier.apply import ApplyStats, Routed, TargetWriter
from cdc_applier.decode import DecodeError, decode
from cdc_applier.dlq import DeadLetters
from cdc_applier.offsets import applier_group
from cdc_applier.route import Router

HEARTBEAT_S = 2.0
RETRY_LIMIT = 8


@dataclass
class ApplierStats:
    records: int = 0
    applied: int = 0
    skipped_stale: int = 0
    superseded: int = 0
    not_moving: int = 0
    dead_letters: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict:
        elapsed = time.monotonic() - self.started
        return {
            "records": self.records, "applied": self.applied, "skipped_stale": self.skipped_stale,
            "superseded": self.superseded, "not_moving": self.not_moving, "dead_letters": self.dead_letters,
            "batches": self.batches, "seconds": round(elapsed, 3),
            "events_per_second": round(self.records / elapsed) if elapsed > 0 else 0,
        }


def _lsn_int(text: str | None) -> int | None:
    if not text:
        return None
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class Applier:
    def __init__(self, config: Config, store: ControlStore, rec: MigrationRecord, plan: Plan,
                 *, batch_size: int = 2000, worker_id: str | None = None):
        self.config = config
        self.store = store
        self.rec = rec
        self.plan = plan
        self.batch_size = batch_size
        self.worker_id = worker_id or f"applier@{socket.gethostname()}:{os.getpid()}"
        self.router = Router(plan, rec.name)
        self.stats = ApplierStats()
        self.writers: dict[str, TargetWriter] = {}

    @property
    def topics(self) -> list[str]:
        return self.router.topics

    # ---- targets ---------------------------------------------------------------
    def _connect_targets(self) -> None:
        self._close_targets()
        for target in self.plan.targets():
            c = self.config.cluster(target)
            conn = connect(c.dsn, f"target cluster {target}", autocommit=True)
            shard_schema.writer_session(conn)
            tables = {}
            resumed: dict[str, int] = {}
            moves = [m for m in self.plan.moves if m.target == target]
            for m in moves:
                for t in self.plan.new.groups[m.group].tables:
                    tables[t] = require_table(conn, t, target)
            for row in conn.execute(
                "SELECT tbl, max(resumed_lsn)::text FROM reshard.copy_cursor WHERE migration = %s GROUP BY tbl",
                (self.rec.name,),
            ).fetchall():
                lsn = _lsn_int(row[1])
                if lsn is not None:
                    resumed[row[0]] = lsn
            self.writers[target] = TargetWriter(conn, target, self.rec.name, tables, resumed)

    def _close_targets(self) -> None:
        for w in self.writers.values():
            try:
                w.conn.close()
            except Exception:
                pass
        self.writers = {}

    # ---- the loop ----------------------------------------------------------------
    def run(self, stop: threading.Event, *, until: Callable[[], bool] | None = None,
            task: Task | None = None) -> ApplierStats:
        consumer = Consumer(client_conf(self.config.kafka.bootstrap_servers, **{
            "group.id": applier_group(self.rec.name),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "client.id": self.worker_id,
            "partition.assignment.strategy": "cooperative-sticky",
            # a worker that dies (SIGKILL, lost host) gives its partitions away within 10 s
            "session.timeout.ms": 10000,
        }))
        dlq = DeadLetters(self.config.kafka.bootstrap_servers, self.rec.name)
        self._connect_targets()
        consumer.subscribe(self.topics)
        last_beat = 0.0
        try:
            while not stop.is_set():
                msgs = consumer.consume(self.batch_size, timeout=0.25)
                if msgs:
                    self._batch(consumer, dlq, msgs)
                    if task is not None:
                        task.update(done=self.stats.records, extra=f"applied {self.stats.applied:,}")
                now = time.monotonic()
                if now - last_beat >= HEARTBEAT_S:
                    last_beat = now
                    self.store.heartbeat(self.rec.name, self.worker_id, "applier", self.stats.to_dict())
                if until is not None and not msgs and until():
                    break
        except (MigrationPaused, SchemaMismatch) as exc:
            self.store.set_error(self.rec.name, f"applier paused: {exc}")
            raise
        finally:
            try:
                self.store.heartbeat(self.rec.name, self.worker_id, "applier", self.stats.to_dict())
            except ReshardError:
                pass
            consumer.close()
            self._close_targets()
        return self.stats

    def _batch(self, consumer: Consumer, dlq: DeadLetters, msgs: list) -> None:
        per_target: dict[str, list[Routed]] = {}
        offsets: dict[tuple[str, int], int] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise Unavailable(f"Kafka consumer error: {err}")
            tp = (m.topic(), m.partition())
            offsets[tp] = m.offset() + 1
            self.stats.records += 1
            try:
                ev = decode(m.key(), m.value())
                if ev is None:
                    continue
                source = self.router.source_of(m.topic())
                if ev.op == "t":
                    raise MigrationPaused(
                        f"TRUNCATE of {ev.table} on source {source} (Kafka {m.topic()}[{m.partition()}]@{m.offset()}): "
                        "reshard will not guess which target rows it meant; the migration is paused"
                    )
                target = self.router.target(ev, source)
            except DecodeError as exc:
                dlq.send(m.topic(), m.partition(), m.offset(), m.key(), m.value(), str(exc))
                self.stats.dead_letters += 1
                continue
            if target is None:
                self.stats.not_moving += 1
                continue
            per_target.setdefault(target, []).append(Routed(ev, m.topic(), m.partition(), m.offset(), source))
        for target, items in per_target.items():
            touched = {(r.topic, r.partition) for r in items}
            stats = self._apply_with_retry(target, items, {tp: o for tp, o in offsets.items() if tp in touched})
            self.stats.applied += stats.applied
            self.stats.skipped_stale += stats.skipped_stale
            self.stats.superseded += stats.superseded
            for r, reason in stats.rejected:
                raw = [m for m in msgs if m.topic() == r.topic and m.partition() == r.partition and m.offset() == r.offset]
                if raw:
                    dlq.send(r.topic, r.partition, r.offset, raw[0].key(), raw[0].value(), f"{target}: {reason}")
                    self.stats.dead_letters += 1
        dlq.flush()
        self._commit(consumer, offsets)
        self.stats.batches += 1

    def _apply_with_retry(self, target: str, items: list[Routed], offsets: dict) -> ApplyStats:
        """Transient target failures (restart, network) are retried with backoff on
        fresh connections; the batch is the same, and idempotent, so retrying is safe."""
        delay = 0.5
        last: Exception | None = None
        for _attempt in range(RETRY_LIMIT):
            try:
                if target not in self.writers:
                    self._connect_targets()
                return self.writers[target].apply(items, offsets)
            except (psycopg.OperationalError, Unavailable) as exc:
                last = exc
                self._close_targets()
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise Unavailable(f"target cluster {target} keeps failing: {last}")

    def _commit(self, consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        for attempt in range(RETRY_LIMIT):
            try:
                consumer.commit(offsets=tps, asynchronous=False)
                return
            except KafkaException as exc:
                if attempt == RETRY_LIMIT - 1:
                    raise Unavailable(f"cannot commit Kafka offsets: {exc}") from None
                time.sleep(0.5)
