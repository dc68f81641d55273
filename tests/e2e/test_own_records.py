"""Every topic reshard produces is Avro a plain Confluent consumer and deserializer (no reshard
code) read: the change topics Debezium writes, and reshard's own records (dead letters,
migration events) under documented subjects."""

from __future__ import annotations

import json
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from reshard.kafka.streams import forward
from tests.e2e.helpers import ApplierThread, prepare, stock_registry_client

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _read_all(bootstrap: str, topic: str, deserialize, keep, until, timeout: float = 60, key: bool = False) -> list:
    """Every record of ``topic`` from the start that ``keep`` accepts (its key with ``key``),
    until ``until`` holds."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"plain-{time.time()}", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            m = c.poll(0.5)
            if m is None or m.error() or m.value() is None:
                continue
            raw = m.key() if key else m.value()
            rec = deserialize(raw, SerializationContext(topic, MessageField.KEY if key else MessageField.VALUE))
            if keep(rec):
                out.append(rec)
        return out
    finally:
        c.close()


def test_dead_letters_and_migration_events_read_with_a_plain_confluent_consumer(env):
    name = env.migration()
    co = prepare(env, rows=300, migration=name)
    co.start(name)
    topic = forward(name, "source1").topic("public.accounts")
    p = Producer({"bootstrap.servers": env.config.kafka.bootstrap_servers})
    p.produce(topic, key=b'{"id": 1}', value=b"this is not json")
    p.flush(10)
    with env.conn("source1") as conn:
        conn.execute("UPDATE public.accounts SET balance = 3 WHERE id <= 20")
    registry = stock_registry_client(env.config.kafka.schema_registry_url)
    deserialize = AvroDeserializer(registry)
    bootstrap = env.config.kafka.bootstrap_servers
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        events = _read_all(bootstrap, "reshard.events", deserialize, lambda r: r["migration"] == name,
                           lambda got: any(e["event"] == "catchup.proved" for e in got))

    # the change topic: keys and envelopes, including the table's jsonb DEFAULT '{}' column, whose "{}"
    # Avro default made Apicurio 3.0 answer the stock client's GET /schemas/ids/{id} with HTTP 400
    value_schema = json.loads(registry.get_latest_version(f"{topic}-value").schema.schema_str)
    assert '"default": "{}"' in json.dumps(value_schema)
    changes = _read_all(bootstrap, topic, lambda v, ctx: None if v == b"this is not json" else deserialize(v, ctx),
                        lambda r: r is not None and r["op"] == "u",
                        lambda got: len(got) >= 20)
    assert sorted(r["after"]["id"] for r in changes) == list(range(1, 21))
    assert all(r["after"]["balance"] == "3.00" and r["after"]["attrs"] for r in changes), changes[0]
    keys = _read_all(bootstrap, topic, lambda v, ctx: v, lambda r: True, lambda got: len(got) >= 1, key=True)
    key = AvroDeserializer(registry)(next(k for k in keys if k != b'{"id": 1}'),
                                     SerializationContext(topic, MessageField.KEY))
    assert set(key) == {"id"}

    dead = _read_all(bootstrap, f"reshard.{name}.dlq", deserialize, lambda r: True, lambda got: len(got) >= 1)
    assert len(dead) == 1
    d = dead[0]
    assert d["value"] == b"this is not json" and d["key"] == b'{"id": 1}' and d["topic"] == topic
    assert "not JSON" in d["reason"] and d["migration"] == name and d["cluster"] is None

    kinds = [e["event"] for e in events]
    assert {"migration.created", "migration.state", "slot.created", "copy.checkpoint", "catchup.proved"} <= set(kinds)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)  # audit order
    proof = json.loads(next(e for e in events if e["event"] == "catchup.proved")["detail"])
    assert proof["records_through"] >= 20 and "source1" in json.dumps(proof["positions"])

    # the subjects hold the schemas checked in under schemas/
    for subject, avsc in ((f"reshard.{name}.dlq-value", "dead_letter.avsc"),
                          ("reshard.events-value", "migration_event.avsc")):
        registered = json.loads(registry.get_latest_version(subject).schema.schema_str)
        assert registered["name"] == json.loads((SCHEMAS / avsc).read_text())["name"]
        assert [f["name"] for f in registered["fields"]] == [
            f["name"] for f in json.loads((SCHEMAS / avsc).read_text())["fields"]]
