"""The dead-letter topic: records reshard could not apply, kept with the reason.

Nothing is dropped silently (invariant 7): a record that cannot be decoded, routed
or written goes here unchanged, with where it came from and why, and is counted in
the applier's stats and in ``reshard status``. The producer is flushed before the
consumer commits past the record.

With a schema registry each dead letter is a ``DeadLetter`` record (``schemas/
dead_letter.avsc``, subject ``reshard.<migration>.dlq-value``) holding the original key
and value bytes; without one it is the original record itself. Either way the headers
``reshard.reason``/``.topic``/``.partition``/``.offset`` say where it came from and why.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer

from reshard.config import KafkaConfig
from reshard.kafka.admin import client_conf
from reshard.kafka.own_records import RecordWriter
from reshard.kafka.streams import dlq_topic


def lsn_text(lsn: int | None) -> str | None:
    return None if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class DeadLetters:
    def __init__(self, kafka: KafkaConfig, migration: str, registry_url: str | None = None):
        self.migration = migration
        self.topic = dlq_topic(migration)
        self.producer = Producer(client_conf(kafka, **{"acks": "all", "enable.idempotence": True}))
        self.writer = RecordWriter(registry_url, self.topic, "dead_letter") if registry_url else None
        self.count = 0

    def send(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             reason: str, *, lsn: int | None = None, cluster: str | None = None) -> None:
        out = value
        if self.writer is not None:
            out = self.writer.encode({
                "migration": self.migration, "topic": topic, "partition": partition, "offset": offset,
                "key": key, "value": value, "source_position": lsn_text(lsn), "cluster": cluster,
                "reason": reason, "at": int(time.time() * 1000),
            })
        self.producer.produce(
            self.topic, key=key, value=out,
            headers=[("reshard.reason", reason.encode()), ("reshard.topic", topic.encode()),
                     ("reshard.partition", str(partition).encode()), ("reshard.offset", str(offset).encode())],
        )
        self.count += 1

    def flush(self, timeout: float = 30.0) -> None:
        left = self.producer.flush(timeout)
        if left:
            raise RuntimeError(f"{left} dead-letter record(s) not acknowledged by Kafka within {timeout:.0f}s")
