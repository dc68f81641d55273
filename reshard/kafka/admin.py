"""Kafka plumbing reshard needs: topics it creates, partition end offsets, group positions.

Lag and the drain proof are both stated in these terms: a consumer group has applied
everything Kafka holds when, for every partition, its committed offset has reached
the partition's end offset as read *after* the source confirmed the position.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from reshard.config import KafkaConfig
from reshard.errors import Unavailable

T = TypeVar("T")
_quiet = logging.getLogger("reshard.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def client_conf(kafka: KafkaConfig, **extra: object) -> dict:
    """librdkafka settings shared by every client reshard creates: the broker list, the
    operator's ``kafka.client`` settings (SASL, TLS; secrets resolved here), then the
    client's own.

    librdkafka logs every refused connection to stderr; those go to a logger instead,
    and reshard reports unavailability itself, once, with a clear message.
    """
    return {"bootstrap.servers": kafka.bootstrap_servers, **kafka.client_settings(), "logger": _quiet, **extra}


def _reachable(fn: Callable[..., T]) -> Callable[..., T]:
    """A Kafka error while asking Kafka is reported as Unavailable (exit 4), naming the
    cluster, never as a traceback (the callers also keep what PostgreSQL knows)."""
    @functools.wraps(fn)
    def wrapper(self: KafkaAdmin, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self, *args, **kwargs)
        except KafkaException as exc:
            raise Unavailable(f"Kafka at {self.bootstrap} did not answer ({fn.__name__}): {exc}") from None
    return wrapper


class KafkaAdmin:
    def __init__(self, kafka: KafkaConfig):
        self.kafka = kafka
        self.bootstrap = kafka.bootstrap_servers
        self.admin = AdminClient(client_conf(kafka))
        self._probe: Consumer | None = None  # reads watermarks; kept for the next call

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def __enter__(self) -> KafkaAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, timeout: float = 5.0) -> None:
        try:
            md = self.admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise Unavailable(f"Kafka at {self.bootstrap} is unreachable: {exc}") from None
        if not md.brokers:
            raise Unavailable(f"Kafka at {self.bootstrap} reports no brokers")

    @_reachable
    def topics(self, timeout: float = 10.0) -> dict[str, int]:
        """Topic name -> partition count."""
        md = self.admin.list_topics(timeout=timeout)
        return {name: len(t.partitions) for name, t in md.topics.items()}

    def ensure_topics(self, names: Iterable[str], partitions: int, replication: int) -> list[str]:
        """Create the topics that do not exist yet; return the ones created."""
        existing = self.topics()
        missing = [n for n in names if n not in existing]
        if not missing:
            return []
        futures = self.admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=replication) for n in missing],
            operation_timeout=30,
        )
        for fut in futures.values():
            try:
                fut.result()
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
        return missing

    def delete_topics(self, names: Iterable[str]) -> None:
        names = [n for n in names if n in self.topics()]
        if not names:
            return
        for _name, fut in self.admin.delete_topics(names, operation_timeout=30).items():
            try:
                fut.result()
            except KafkaException as exc:
                if "UNKNOWN_TOPIC" not in str(exc):
                    raise

    @_reachable
    def end_offsets(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """High watermark of every partition of ``topics``."""
        parts = self.topics()
        if self._probe is None:
            self._probe = Consumer(client_conf(self.kafka, **{"group.id": "reshard-offset-probe",
                                                                  "enable.auto.commit": False}))
        out = {}
        for t in topics:
            for p in range(parts.get(t, 0)):
                _low, high = self._probe.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                out[(t, p)] = high
        return out

    @_reachable
    def committed(self, group: str, topics: Iterable[str], timeout: float | None = None) -> dict[tuple[str, int], int]:
        """The group's committed offset per partition (0 where it committed nothing).
        ``timeout`` bounds the wait for Kafka's answer (concurrent.futures.TimeoutError)."""
        parts = self.topics()
        tps = [TopicPartition(t, p) for t in topics for p in range(parts.get(t, 0))]
        if not tps:
            return {}
        fut = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group]
        result = fut.result(timeout=timeout)
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in result.topic_partitions}

    def partition_lag(self, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
        """Records after the group's committed offset, per partition of ``topics``."""
        ends = self.end_offsets(topics)
        done = self.committed(group, topics)
        return {tp: max(0, end - done.get(tp, 0)) for tp, end in ends.items()}

    def lag(self, group: str, topics: list[str]) -> int:
        return sum(self.partition_lag(group, topics).values())
