"""The dead-letter topic: records reshard could not apply, kept with the reason.

Nothing is dropped silently (invariant 7): a record that cannot be decoded, routed
or written goes here unchanged, with headers naming where it came from and why,
and is counted in the applier's stats and in ``reshard status``. The producer is
flushed before the consumer commits past the record.
"""

from __future__ import annotations

from confluent_kafka import Producer

from reshard.kafka_admin import client_conf


def dlq_topic(migration: str) -> str:
    return f"reshard.{migration}.dlq"


class DeadLetters:
    def __init__(self, bootstrap: str, migration: str):
        self.topic = dlq_topic(migration)
        self.producer = Producer(client_conf(bootstrap, **{"acks": "all", "enable.idempotence": True}))
        self.count = 0

    def send(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             reason: str) -> None:
        self.producer.produce(
            self.topic, key=key, value=value,
            headers=[("reshard.reason", reason.encode()), ("reshard.topic", topic.encode()),
                     ("reshard.partition", str(partition).encode()), ("reshard.offset", str(offset).encode())],
        )
        self.count += 1

    def flush(self, timeout: float = 30.0) -> None:
        left = self.producer.flush(timeout)
        if left:
            raise RuntimeError(f"{left} dead-letter record(s) not acknowledged by Kafka within {timeout:.0f}s")
