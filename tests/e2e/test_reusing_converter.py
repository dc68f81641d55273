"""reshard's Avro converter (Apicurio's, resolving each table version's schema once instead of
once per record) writes what Apicurio's converter writes: the same registry ids for the same
schema, records a stock Confluent deserializer reads, and a table's new version registered
when the table changes under it. Real stack: Debezium on Kafka Connect, the Apicurio registry."""

from __future__ import annotations

import time

from confluent_kafka import Consumer
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from reshard.cdc_applier.connector import AVRO_CONVERTER, REUSING_AVRO_CONVERTER
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import forward
from tests.e2e.helpers import ApplierThread, assert_targets_equal_source, prepare, stock_registry_client


def _updates(bootstrap: str, topic: str, count: int, timeout: float = 90) -> list[tuple[bytes, bytes]]:
    """The first ``count`` update records of ``topic`` as raw (key, value) bytes: Avro in the
    Confluent wire format (a zero byte, the schema's 4-byte registry id, the datum)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{time.time()}", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error() or m.value() is None:
                continue
            out.append((m.key(), m.value()))
        return out
    finally:
        c.close()


def _switch(client: ConnectClient, connector: str, converter: str) -> None:
    cfg = {k: v for k, v in (client.config(connector) or {}).items() if k != "name"}
    client.put(connector, {**cfg, "key.converter": converter, "value.converter": converter})
    time.sleep(2.0)  # the task restarts with the new config
    client.wait_running(connector)


def test_the_reusing_converter_writes_apicurios_ids_and_registers_a_new_table_version(env):
    assert env.config.kafka.format == "avro"
    name = env.migration()
    co = prepare(env, rows=300, migration=name)
    co.start(name)
    stream = forward(name, "source1")
    topic = stream.topic("public.accounts")
    client = ConnectClient(env.config.connect)
    cfg = client.config(stream.connector) or {}
    assert cfg["key.converter"] == cfg["value.converter"] == REUSING_AVRO_CONVERTER  # the stack's worker has it

    def update(ids: range, balance: int) -> None:
        with env.conn("source1") as conn:
            conn.execute("UPDATE public.accounts SET balance = %s WHERE id BETWEEN %s AND %s",
                         (balance, ids.start, ids.stop - 1))

    update(range(1, 31), 5)  # reshard's converter
    _updates(env.config.kafka.bootstrap_servers, topic, 30)
    _switch(client, stream.connector, AVRO_CONVERTER)
    update(range(31, 61), 6)  # Apicurio's own, the same table version
    _updates(env.config.kafka.bootstrap_servers, topic, 60)
    _switch(client, stream.connector, REUSING_AVRO_CONVERTER)
    with env.conn("source1") as conn:  # a new version of the table, under reshard's converter
        conn.execute("ALTER TABLE public.accounts ADD COLUMN remark text DEFAULT 'x'")
    with env.conn("source1") as conn:
        conn.execute("UPDATE public.accounts SET remark = 'y', balance = 7 WHERE id BETWEEN 61 AND 90")

    records = _updates(env.config.kafka.bootstrap_servers, topic, 90)
    assert len(records) == 90
    assert all(k[0] == 0 and v[0] == 0 for k, v in records)  # the Confluent wire format's magic byte
    deserialize = AvroDeserializer(stock_registry_client(env.config.kafka.schema_registry_url))
    ctx = SerializationContext(topic, MessageField.VALUE)
    by_id = {}  # the topic's partitions interleave: by key, not by order
    for _k, v in records:
        after = deserialize(v, ctx)["after"]
        by_id[after["id"]] = (v[1:5], after)
    assert sorted(by_id) == list(range(1, 91))
    ours, apicurios, new_version = ([by_id[i] for i in range(lo, lo + 30)] for lo in (1, 31, 61))
    assert len({i for i, _a in ours}) == 1
    assert {i for i, _a in ours} == {i for i, _a in apicurios}, \
        "the two converters resolved the same table version to different registry ids"
    assert len({i for i, _a in new_version}) == 1 and new_version[0][0] != ours[0][0]  # registered anew
    assert {a["balance"] for _i, a in ours} == {"5.00"} and {a["balance"] for _i, a in apicurios} == {"6.00"}
    assert all("remark" not in a for _i, a in ours + apicurios)
    assert {a["remark"] for _i, a in new_version} == {"y"}
    assert len({k[1:5] for k, _v in records}) == 1  # the key did not change shape: one key schema
    key = AvroDeserializer(stock_registry_client(env.config.kafka.schema_registry_url))(
        records[0][0], SerializationContext(topic, MessageField.KEY))
    assert set(key) == {"id"}

    with ApplierThread(co, name):  # both converters' records and the new version apply
        co.wait(name, timeout=120)
    assert_targets_equal_source(env)
