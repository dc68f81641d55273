"""Avro envelopes (Confluent wire format, as the Apicurio converter writes Debezium's
records) decode to the same ChangeEvents as their JSON twins."""

import base64
import io
import struct

import fastavro
import pytest

from reshard.cdc_applier.avro import UnknownSchema, WriterSchemas
from reshard.cdc_applier.decode import PLACEHOLDER, DecodeError, decode
from tests.unit.test_decode import ROW, envelope

NS = "reshard.m.fwd.source1.public.accounts"


def _opt(t):
    return {"type": ["null", t], "default": None}


VALUE = {"type": "record", "name": "Value", "fields": [
    {"name": "id", "type": "long"},
    {"name": "name", **_opt("string")},
    {"name": "bal", **_opt("string")},
    {"name": "ts", **_opt({"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"})},
    {"name": "attrs", **_opt({"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Json"})},
    {"name": "d", **_opt({"type": "int", "connect.version": 1, "connect.name": "io.debezium.time.Date"})},
    {"name": "lts", **_opt({"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.MicroTimestamp"})},
    {"name": "arr", **_opt({"type": "array", "items": ["null", "int"]})},
    {"name": "dec", **_opt({"type": "bytes", "connect.name": "org.apache.kafka.connect.data.Decimal",
                             "connect.parameters": {"scale": "2"}})},
]}
SOURCE = {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql", "fields": [
    {"name": "schema", "type": "string"}, {"name": "table", "type": "string"},
    {"name": "lsn", **_opt("long")}, {"name": "origin", **_opt("string")},
]}
ENVELOPE = {"type": "record", "name": "Envelope", "namespace": NS, "fields": [
    {"name": "before", **_opt(VALUE)}, {"name": "after", **_opt("Value")},  # by name, as Debezium's schema does
    {"name": "source", "type": SOURCE}, {"name": "op", "type": "string"}, {"name": "ts_ms", **_opt("long")},
]}
KEY = {"type": "record", "name": "Key", "namespace": NS, "fields": [{"name": "id", "type": "long"}]}


class Registry(WriterSchemas):
    """The registry's answers, from memory (this is a unit test of decoding)."""

    def __init__(self, schemas: dict[int, dict], compiled: bool = True):
        super().__init__("http://registry.invalid/apis/ccompat/v7", compiled=compiled)
        self.known = schemas

    def _fetch(self, schema_id: int) -> dict:
        if schema_id not in self.known:
            raise UnknownSchema(f"schema id {schema_id} is not in the registry")
        self.fetches += 1
        return self.known[schema_id]


def wire(schema_id: int, schema: dict, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def avro_envelope(op, before=None, after=None, lsn=22195456):
    def row(r):
        return None if r is None else {**r, "dec": None if r.get("dec") is None else base64.b64decode(r["dec"])}

    return wire(7, ENVELOPE, {"before": row(before), "after": row(after), "op": op, "ts_ms": 1,
                              "source": {"schema": "public", "table": "accounts", "lsn": lsn, "origin": None}})


KEY_1 = wire(3, KEY, {"id": 1})


@pytest.fixture(params=["compiled", "fastavro"])
def registry(request):
    """Both readers of envelopes: the compiled one (the default) and fastavro's."""
    return Registry({7: ENVELOPE, 3: KEY}, compiled=request.param == "compiled")


@pytest.mark.parametrize("op,kw", [
    ("u", {"after": ROW}),
    ("c", {"after": dict(ROW, name=PLACEHOLDER)}),  # an unchanged TOAST value
    ("u", {"after": {**{k: None for k in ROW}, "id": 1}}),  # NULLs
    ("d", {"before": {**{k: None for k in ROW}, "id": 1}}),
])
def test_avro_and_json_twins_decode_to_the_same_event(registry, op, kw):
    assert decode(KEY_1, avro_envelope(op, **kw), registry) == decode(b'{"id":1}', envelope(op, **kw))


def test_writer_schemas_are_fetched_once_per_id(registry):
    for _ in range(3):
        decode(KEY_1, avro_envelope("u", after=ROW), registry)
    assert registry.fetches == 2  # the envelope's and the key's


def test_a_new_schema_id_mid_stream_is_read_without_anything_else(registry):
    evolved = {**VALUE, "fields": [*VALUE["fields"], {"name": "region", **_opt("string")}]}
    schema = {**ENVELOPE, "fields": [{"name": "before", **_opt(evolved)}, *ENVELOPE["fields"][1:]]}
    registry.known[8] = schema
    value = wire(8, schema, {"before": None, "after": {**{k: None for k in ROW}, "id": 1, "region": "us"}, "op": "u",
                             "ts_ms": 1, "source": {"schema": "public", "table": "accounts", "lsn": 5, "origin": None}})
    ev = decode(KEY_1, value, registry)
    assert ev.row["region"] == "us" and ev.columns[-1] == "region"


@pytest.mark.parametrize("key,value,reason", [
    (KEY_1, b"\x00\x00\x00\x00\x63" + b"\x02", "schema id 99 is not in the registry"),
    (KEY_1, b"\x00\x00\x00\x00\x07" + b"\x02\x00", "does not decode with its writer schema 7"),
    (KEY_1, b"\x00\x00", "neither JSON nor Avro"),
    (b"\x00\x00\x00\x00\x03", None, None),  # a tombstone: no change at all
])
def test_malformed_avro_records_say_why(registry, key, value, reason):
    if reason is None:
        assert decode(key, value, registry) is None
        return
    with pytest.raises(DecodeError, match=reason):
        decode(key, value, registry)


def test_avro_without_a_registry_says_what_is_missing():
    with pytest.raises(DecodeError, match="no kafka.schema_registry_url"):
        decode(KEY_1, avro_envelope("u", after=ROW), None)


def test_an_unchanged_toasted_bytea_in_avro_is_unavailable_not_the_placeholder_bytes(registry):
    # binary.handling.mode=bytes: Debezium sends the placeholder's bytes for an unchanged TOASTed bytea
    value_schema = {"type": "record", "name": "Value", "fields": [
        {"name": "id", "type": "long"}, {"name": "raw", **_opt("bytes")}]}
    schema = {**ENVELOPE, "fields": [{"name": "before", **_opt(value_schema)}, *ENVELOPE["fields"][1:]]}
    registry.known[9] = schema
    value = wire(9, schema, {"before": None, "after": {"id": 1, "raw": PLACEHOLDER.encode()}, "op": "u", "ts_ms": 1,
                             "source": {"schema": "public", "table": "accounts", "lsn": 5, "origin": None}})
    ev = decode(KEY_1, value, registry)
    assert ev.unavailable == {"raw"} and "raw" not in ev.row
    assert decode(KEY_1, value.replace(PLACEHOLDER.encode(), b"\x00" * len(PLACEHOLDER)), registry).row["raw"] \
        == b"\x00" * len(PLACEHOLDER)
