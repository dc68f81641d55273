"""Every column type the applier supports round-trips exactly, in both encodings (Avro
through the registry, JSON with schemas), against the same rows: NULLs, unchanged TOAST
values, deletes and key changes included."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import replace

import psycopg
import pytest
from confluent_kafka import Consumer

from reshard.cdc_applier import envelope_reader
from reshard.cdc_applier.avro import WriterSchemas
from reshard.config import KafkaConfig
from reshard.coordinator import Coordinator
from reshard.kafka.admin import client_conf
from reshard.kafka.streams import forward
from reshard.maps.shardmap import DEFAULT_BUCKETS, parse_map
from tests.e2e.helpers import TARGETS, ApplierThread

TABLE = "public.typed"
DDL = """
CREATE TABLE public.typed (
    id bigint PRIMARY KEY,
    i int, s smallint, n numeric(20,6), nv numeric, r real, d double precision, b boolean,
    t text, vc varchar(20), by bytea, u uuid, j json, jb jsonb,
    dt date, tm time, ts timestamp, tstz timestamptz, ia int[], ta text[],
    big text
)
"""
# one row of values per line; the last row is all NULLs; big is a TOASTed (out-of-line) value
ROWS = """
INSERT INTO public.typed SELECT g, g * 7, (g %% 300)::smallint, 12345678901234.123456 / g, (g::numeric / 7)::numeric,
    g / 3.0, g / 7.0, g %% 2 = 0, 'text ' || g || ' ünïcødé', 'v' || g, decode('00ff' || lpad(to_hex(g), 8, '0'), 'hex'),
    md5(g::text)::uuid, json_build_object('g', g, 's', 'ä"\\'), jsonb_build_object('g', g, 'arr', jsonb_build_array(1, null)),
    date '1969-07-20' + g::int, time '23:59:59.999999' - g * interval '1 second', timestamp '1999-12-31 23:59:59.123456' + g * interval '1 hour',
    timestamptz '2024-02-29 12:00:00.654321+05:30' + g * interval '1 minute', ARRAY[g, NULL, -g], ARRAY['a', NULL, 'c' || g],
    (SELECT string_agg(md5(g::text || x::text), '') FROM generate_series(1, 200) x)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
"""


def _maps() -> tuple[dict, dict]:
    group = {"key": "bigint", "tables": {TABLE: "id"}}
    before = {"name": "types-before", "groups": {"typed": {**group, "hash": {
        "buckets": DEFAULT_BUCKETS, "clusters": {"source1": f"0-{DEFAULT_BUCKETS - 1}"}}}}}
    half = DEFAULT_BUCKETS // 2
    after = {"name": "types-after", "groups": {"typed": {**group, "hash": {
        "buckets": DEFAULT_BUCKETS, "clusters": {"target1": f"0-{half - 1}", "target2": f"{half}-{DEFAULT_BUCKETS - 1}"}}}}}
    return before, after


def _rows_as_text(dsn: str) -> list[tuple[int, str]]:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.execute("SELECT id, typed::text FROM public.typed typed ORDER BY id").fetchall()


def _first_record(kafka: KafkaConfig, topic: str) -> bytes:
    c = Consumer(client_conf(kafka, **{"group.id": f"types-{time.time()}", "auto.offset.reset": "earliest"}))
    c.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error() and m.value():
                return m.value()
        raise AssertionError(f"no record on {topic}")
    finally:
        c.close()


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_every_supported_type_round_trips_exactly(env, fmt):
    env.config = replace(env.config, kafka=replace(env.config.kafka, format=fmt))
    for cluster in ["source1", *TARGETS]:
        with env.conn(cluster) as conn:
            conn.execute(DDL)
    with env.conn("source1") as conn:
        conn.execute(ROWS, {"lo": 1, "hi": 40})  # copied by the snapshot
        conn.execute("INSERT INTO public.typed (id) VALUES (1000)")  # NULLs everywhere
    name = env.migration()
    co = Coordinator.open(env.config)
    before, after = _maps()
    co.create(name, parse_map(after, env.config.clusters), parse_map(before, env.config.clusters))
    co.start(name)
    with ApplierThread(co, name):
        with env.conn("source1") as conn:  # streamed: new rows, partial updates, NULLing, deletes, key changes
            conn.execute(ROWS, {"lo": 41, "hi": 120})
            conn.execute("INSERT INTO public.typed (id) VALUES (1001)")
            conn.execute("UPDATE public.typed SET i = -i, ts = ts - interval '1 day' WHERE id % 3 = 0")  # big unchanged
            conn.execute("UPDATE public.typed SET jb = NULL, ia = '{}', ta = NULL, nv = 'NaN' WHERE id % 5 = 0")
            conn.execute("UPDATE public.typed SET n = NULL, j = '[]', big = big || 'x' WHERE id % 7 = 0")
            conn.execute("UPDATE public.typed SET by = '\\x', t = '' WHERE id = 1001")
            conn.execute("DELETE FROM public.typed WHERE id % 11 = 0")
            # a key change carries no unchanged TOAST value under REPLICA IDENTITY DEFAULT: it must set it
            conn.execute("UPDATE public.typed SET id = id + 5000, big = big || 'k' WHERE id % 13 = 0")
        co.wait(name, timeout=90)
    src = _rows_as_text(env.dsn("source1"))
    union = sorted(r for t in TARGETS for r in _rows_as_text(env.dsn(t)))
    assert len(src) > 100 and union == src  # NaN = NaN here: rows compare as PostgreSQL prints them
    value = _first_record(env.config.kafka, forward(name, "source1").topic(TABLE))
    if fmt == "avro":  # the Confluent wire format: magic byte 0, the schema's id in the registry
        assert value[0] == 0
        schema_id = int.from_bytes(value[1:5], "big")
        with urllib.request.urlopen(f"{env.config.kafka.schema_registry_url}/schemas/ids/{schema_id}/schema") as r:
            assert json.load(r)["name"] == "Envelope"
        if envelope_reader.Program is not None:  # every type above was read by the compiled reader, not fastavro
            assert WriterSchemas(env.config.kafka.schema_registry_url).envelope_reader(schema_id) is not None
    else:
        assert json.loads(value)["schema"]["name"].endswith(".Envelope")
