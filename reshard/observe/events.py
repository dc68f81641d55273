"""The ``reshard.events`` topic: a migration's story as other teams' tools read it.

The control database's audit log is the outbox. Everything reshard records there (state
changes, copy checkpoints, catch-up proofs, verification results, every cutover and
rollback step with its timing, gate failures, map changes) is published by a relay, in
audit order, as ``MigrationEvent`` records (``schemas/migration_event.avsc``, subject
``reshard.events-value``, key: the migration), then the relay's cursor advances in the
same transaction that held it. A crash between the two publishes some events again
(at least once; the ``id`` field tells repeats apart), never loses one. The relay row is
locked with SKIP LOCKED, so of many appliers one publishes at a time; running appliers
relay every heartbeat.
"""

from __future__ import annotations

import json

from confluent_kafka import Producer

from reshard.config import Config
from reshard.control.store import ControlStore
from reshard.errors import Unavailable
from reshard.kafka.admin import KafkaAdmin, client_conf
from reshard.kafka.own_records import RecordWriter

EVENTS_TOPIC = "reshard.events"
BATCH = 1000


class EventRelay:
    def __init__(self, config: Config, store: ControlStore):
        if not config.kafka.schema_registry_url:
            raise ValueError("the events relay needs kafka.schema_registry_url")
        self.store = store
        # one partition: the topic keeps the audit order of every migration
        KafkaAdmin(config.kafka).ensure_topics([EVENTS_TOPIC], 1, config.kafka.replication_factor)
        self.failed: list[str] = []
        self.writer = RecordWriter(config.kafka.schema_registry_url, EVENTS_TOPIC, "migration_event")
        self.producer = Producer(client_conf(config.kafka, **{
            "acks": "all", "enable.idempotence": True, "linger.ms": 20}))

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self.failed.append(str(err))

    def publish(self, timeout: float = 10.0) -> int:
        """Publish what the audit log holds beyond the cursor; returns how many were sent
        (0 when another relay holds the cursor)."""
        sent = 0
        while True:
            with self.store.unit() as uow:
                last = uow.claim_relay(EVENTS_TOPIC)
                if last is None:
                    return sent
                rows = uow.audit_after(last, BATCH)
                if not rows:
                    return sent
                for r in rows:
                    self.producer.produce(EVENTS_TOPIC, key=(r["migration"] or "").encode(), value=self.writer.encode({
                        "id": r["id"], "at": r["at"], "migration": r["migration"], "actor": r["actor"],
                        "event": r["event"], "detail": json.dumps(r["detail"], sort_keys=True),
                    }), on_delivery=self._delivered)
                if self.producer.flush(timeout) or self.failed:
                    reason = self.failed[0] if self.failed else f"no acknowledgement within {timeout:.0f}s"
                    self.failed.clear()
                    raise Unavailable(f"Kafka did not take the {EVENTS_TOPIC} records: {reason}")
                uow.advance_relay(EVENTS_TOPIC, rows[-1]["id"])
                sent += len(rows)
            if len(rows) < BATCH:
                return sent
