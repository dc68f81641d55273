"""A polled batch of Kafka records, decoded and routed: what the applier writes on which
cluster, and what it skips (echoes of the other direction, keys that do not move) or sets
aside for the dead-letter topic. No Kafka client, no database: unit-tested on plain records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError

from reshard.cdc_applier.apply import Routed
from reshard.cdc_applier.avro import WriterSchemas
from reshard.cdc_applier.decode import DecodeError, decode
from reshard.cdc_applier.route import Router
from reshard.errors import MigrationPaused, Unavailable
from reshard.kafka.streams import Direction


class Record(Protocol):
    """What the batch reads of a Kafka message (confluent_kafka.Message has it)."""

    def error(self) -> Any: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


@dataclass
class Batch:
    """A polled batch, decoded and routed: what the apply stage needs."""

    per_dest: dict[tuple[str, Direction], list[Routed]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to commit per partition
    by_pos: dict[tuple[str, int, int], Any] = field(default_factory=dict)  # the records, by position
    read: dict[str, int] = field(default_factory=dict)  # records per stream label, for the metrics
    newest_ms: dict[str, int] = field(default_factory=dict)  # newest source commit time per stream label
    dead: list[tuple[Any, str]] = field(default_factory=list)  # (record, why) for the dead-letter topic
    records: int = 0
    reverse: int = 0  # records of reverse streams
    echoes: int = 0
    not_moving: int = 0


def prepare(msgs: list[Any], router: Router, schemas: WriterSchemas | None) -> Batch:
    """Route every record of ``msgs`` to the cluster it is applied on, in order. A
    consumer error is Unavailable; a TRUNCATE pauses the migration (MigrationPaused)."""
    b = Batch()
    for m in msgs:
        err = m.error()
        if err is not None:
            if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                continue  # a stream's topics were just dropped (rollback, complete): resubscribe soon
            raise Unavailable(f"Kafka consumer error: {err}")
        tp = (m.topic(), m.partition())
        b.offsets[tp] = m.offset() + 1
        b.by_pos[(m.topic(), m.partition(), m.offset())] = m
        b.records += 1
        label = router.label_of(m.topic())
        b.read[label] = b.read.get(label, 0) + 1
        try:
            ev = decode(m.key(), m.value(), schemas)
            if ev is None:
                continue
            stream = router.stream_of(m.topic())
            if stream.direction == Direction.REVERSE:
                b.reverse += 1
            if ev.ts_ms is not None and ev.ts_ms > b.newest_ms.get(label, 0):
                b.newest_ms[label] = ev.ts_ms
            if router.is_echo(ev, stream):
                b.echoes += 1
                continue
            if ev.op == "t":
                raise MigrationPaused(
                    f"TRUNCATE of {ev.table} on {stream.cluster} (Kafka {m.topic()}[{m.partition()}]@{m.offset()}): "
                    "reshard will not guess which rows it meant elsewhere; the migration is paused"
                )
            dest = router.target(ev, stream)
        except DecodeError as exc:
            b.dead.append((m, str(exc)))
            continue
        if dest is None:
            b.not_moving += 1
            continue
        b.per_dest.setdefault((dest, stream.direction), []).append(
            Routed(ev, m.topic(), m.partition(), m.offset(), stream.cluster))
    return b
