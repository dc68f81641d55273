"""Bad input gets a clear error and loses nothing (invariant 7)."""

import json
import subprocess
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from reshard.config import KafkaConfig
from reshard.coordinator import Coordinator
from reshard.errors import SetupError
from reshard.exit_codes import ExitCode
from reshard.kafka.admin import client_conf
from reshard.kafka.streams import dlq_topic, forward
from reshard.maps.shardmap import parse_map
from tests.e2e.helpers import (
    ApplierThread,
    assert_targets_equal_source,
    prepare,
    reshard_cmd,
    stock_registry_client,
    write_config_file,
)


def _dead_letters(kafka: KafkaConfig, topic: str, expect: int, timeout: float = 30) -> list:
    c = Consumer(client_conf(kafka, **{"group.id": f"dlq-reader-{time.time()}", "auto.offset.reset": "earliest"}))
    c.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            out.append(m)
    c.close()
    return out


def test_malformed_records_go_to_the_dead_letter_topic_with_reasons(env):
    name = env.migration()
    co = prepare(env, rows=500, migration=name)
    co.start(name)
    topic = forward(name, "source1").topic("public.accounts")
    p = Producer(client_conf(env.config.kafka))
    p.produce(topic, key=b'{"id": 1}', value=b"this is not json")
    p.produce(topic, key=b'{"id": 2}', value=json.dumps({"schema": {}, "payload": {"op": "z"}}).encode())
    p.flush(10)
    with env.conn("source1") as conn:  # real changes keep flowing around the bad records
        conn.execute("UPDATE public.accounts SET balance = 1 WHERE id <= 50")
    with ApplierThread(co, name) as a:
        co.wait(name, timeout=60)
    assert a.result["stats"].dead_letters == 2
    dead = _dead_letters(env.config.kafka, dlq_topic(name), 2)
    reasons = sorted(dict(m.headers())["reshard.reason"].decode() for m in dead)
    assert any("not JSON" in r for r in reasons) and any("op" in r for r in reasons)
    registry = stock_registry_client(env.config.kafka.schema_registry_url)
    letters = [AvroDeserializer(registry)(m.value(), SerializationContext(m.topic(), MessageField.VALUE)) for m in dead]
    assert {d["value"] for d in letters} >= {b"this is not json"}  # the original bytes, kept
    assert all(dict(m.headers())["reshard.topic"].decode() == topic for m in dead)
    assert_targets_equal_source(env)


def test_schema_drift_pauses_the_applier_with_a_clear_reason(env, tmp_path):
    """With schema changes not placed (--on-ddl ignore, or no capture), a row that does not fit pauses."""
    name = env.migration()
    co = prepare(env, rows=500, migration=name)
    co.store.update_settings(name, on_ddl="ignore")
    co.start(name)
    with env.conn("source1") as conn:
        conn.execute("ALTER TABLE public.accounts ADD COLUMN region text")
        conn.execute("UPDATE public.accounts SET region = 'eu' WHERE id = 7")
    cfg = write_config_file(env, tmp_path)
    proc = subprocess.run(reshard_cmd(cfg, "apply", name), capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.PAUSED, proc.stderr
    assert "schema drift on public.accounts" in proc.stderr and "region" in proc.stderr
    status = json.loads(subprocess.run(reshard_cmd(cfg, "status", name, "--json"), capture_output=True,
                                       text=True, timeout=60).stdout)
    assert "schema drift" in status["error"]
    # the fix: the same DDL on the targets; the rerun applies the paused change
    for t in ("target1", "target2"):
        with env.conn(t) as conn:
            conn.execute("ALTER TABLE public.accounts ADD COLUMN region text")
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
    assert_targets_equal_source(env)


def test_a_table_without_primary_key_is_refused_before_anything_is_created(env):
    for c in ("source1", "target1", "target2"):
        with env.conn(c) as conn:
            conn.execute("CREATE TABLE public.events (id bigint NOT NULL, body text)")
    with env.conn("source1") as conn:
        conn.execute("INSERT INTO public.events SELECT g, 'x' FROM generate_series(1, 10) g")
    group = {"key": "bigint", "tables": {"public.events": "id"}}
    before = parse_map({"groups": {"e": {**group, "hash": {"buckets": 4, "modulo": ["source1"] * 4}}}})
    after = parse_map({"groups": {"e": {**group, "hash": {"buckets": 4, "modulo": ["target1", "target2"] * 2}}}})
    co = Coordinator.open(env.config)
    co.create(env.migration(), after, before)
    with pytest.raises(SetupError, match="has no primary key"):
        co.start(env.migration())
    with env.conn("source1") as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
                            ).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0


def test_target_column_type_mismatch_is_refused(env):
    name = env.migration()
    co = prepare(env, rows=10, migration=name)
    with env.conn("target2") as conn:
        conn.execute("ALTER TABLE public.accounts ALTER COLUMN balance TYPE numeric(20,4)")
    with pytest.raises(SetupError, match=r"balance is numeric\(14,2\) on source1 but numeric\(20,4\) on target2"):
        co.start(name)


def test_ddl_with_a_backlog_is_placed_and_the_backlog_drains(env, tmp_path):
    """Changes decoded before a column existed lack it; PostgreSQL's own logical
    replication applies them (NULL or the default fills it), and so does reshard, which
    also adds the columns to the targets itself (captured on the source)."""
    name = env.migration()
    co = prepare(env, rows=500, migration=name)
    co.start(name)
    with env.conn("source1") as conn:  # a backlog in the old shape, then the DDL, then the new shape
        conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id <= 100")
        conn.execute("INSERT INTO public.accounts (id, owner, balance) SELECT g, 'old', 0 FROM generate_series(1001, 1050) g")
        conn.execute("ALTER TABLE public.accounts ADD COLUMN region text, ADD COLUMN tier int NOT NULL DEFAULT 3")
        conn.execute("UPDATE public.accounts SET region = 'eu' WHERE id BETWEEN 50 AND 150")
        conn.execute("INSERT INTO public.accounts (id, owner, balance) SELECT g, 'new', 0 FROM generate_series(2001, 2050) g")
    cfg = write_config_file(env, tmp_path)
    proc = subprocess.run(reshard_cmd(cfg, "apply", name, "--until-caught-up", "--timeout", "120"),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "add column region text [early]" in proc.stderr and "add column tier integer [early]" in proc.stderr
    assert_targets_equal_source(env)


def test_a_column_added_mid_stream_is_picked_up_without_a_restart(env):
    name = env.migration()
    co = prepare(env, rows=500, migration=name)
    co.start(name)
    with ApplierThread(co, name):
        with env.conn("source1") as conn:  # a change in the table's first version
            conn.execute("UPDATE public.accounts SET balance = 7 WHERE id <= 10")
        co.wait(name, timeout=60)  # the applier's sessions have read the tables
        for t in ("target1", "target2"):
            with env.conn(t) as conn:
                conn.execute("ALTER TABLE public.accounts ADD COLUMN region text")
        with env.conn("source1") as conn:
            conn.execute("ALTER TABLE public.accounts ADD COLUMN region text")
            conn.execute("UPDATE public.accounts SET region = 'us' WHERE id <= 200")
        co.wait(name, timeout=60)
    assert_targets_equal_source(env)
    # the change events after the ALTER carry a new writer schema, which the running applier read
    subject = f"{forward(name, 'source1').topic('public.accounts')}-value"
    with urllib.request.urlopen(f"{env.config.kafka.schema_registry_url}/subjects/{subject}/versions") as r:
        assert len(json.load(r)) == 2


def test_a_start_whose_checks_fail_leaves_no_planned_migration(env, tmp_path):
    import yaml

    for c in ("source1", "target1", "target2"):
        with env.conn(c) as conn:
            conn.execute("CREATE TABLE public.events (id bigint NOT NULL, body text)")  # no primary key
    group = {"key": "bigint", "tables": {"public.events": "id"}}
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(
        {"groups": {"e": {**group, "hash": {"buckets": 4, "modulo": ["source1"] * 4}}}}))
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(
        {"groups": {"e": {**group, "hash": {"buckets": 4, "modulo": ["target1", "target2"] * 2}}}}))
    cfg = write_config_file(env, tmp_path)
    name = env.migration()
    run = subprocess.run(reshard_cmd(cfg, "start", name, "--to", str(tmp_path / "after.yaml"), "--from",
                                     str(tmp_path / "before.yaml")), capture_output=True, text=True, timeout=120)
    assert run.returncode == ExitCode.BAD_INPUT, run.stderr
    assert "has no primary key" in run.stderr and "was not kept" in run.stderr
    assert name not in {m["name"] for m in Coordinator.open(env.config).store.migrations()}
