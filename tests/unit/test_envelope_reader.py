"""The compiled Avro reader (cdc_applier/envelope_reader.py, _envelope.c) reads what fastavro
reads, value for value, over every Avro type a Debezium schema can hold; on truncated or
corrupted bodies it raises ValueError and never reads past the buffer; and it declines the
schemas it is not built for, so fastavro reads those."""

import io

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reshard.cdc_applier import envelope_reader
from reshard.cdc_applier.envelope_reader import Unsupported, compile_envelope, compile_reader

pytestmark = pytest.mark.skipif(envelope_reader.Program is None,
                                reason="the _envelope extension is not built (no C compiler at install)")

EVERYTHING = {"type": "record", "name": "Row", "namespace": "t", "fields": [
    {"name": "n", "type": "null"},
    {"name": "flag", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "raw", "type": "bytes"},
    {"name": "s", "type": "string"},
    {"name": "opt", "type": ["null", "string"]},
    {"name": "opt_last", "type": [{"type": "string", "connect.name": "io.debezium.data.Enum"}, "null"]},
    {"name": "either", "type": ["null", "long", "string"]},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]}},
    {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
    {"name": "ints", "type": {"type": "array", "items": ["null", "int"]}},
    {"name": "tags", "type": {"type": "map", "values": "string"}},
    {"name": "point", "type": ["null", {"type": "record", "name": "Point", "fields": [
        {"name": "x", "type": "double"}, {"name": "y", "type": "double"}, {"name": "srid", "type": ["null", "int"]}]}]},
    {"name": "again", "type": ["null", "Point"]},  # a named type by name
    {"name": "kind2", "type": "Kind"},
    {"name": "grid", "type": {"type": "array", "items": {"type": "array", "items": "long"}}},
]}


def _strategy(schema, named):
    if isinstance(schema, str):
        if schema in named:
            return named[schema]
        schema = {"type": schema}
    if isinstance(schema, list):
        return st.one_of(*[_strategy(b, named) for b in schema])
    t = schema["type"]
    out = {
        "null": lambda: st.none(),
        "boolean": lambda: st.booleans(),
        "int": lambda: st.integers(-2**31, 2**31 - 1),
        "long": lambda: st.integers(-2**63, 2**63 - 1),
        "float": lambda: st.floats(width=32, allow_nan=False),
        "double": lambda: st.floats(allow_nan=False),
        "bytes": lambda: st.binary(max_size=80),
        "string": lambda: st.text(max_size=80),
        "enum": lambda: st.sampled_from(schema["symbols"]),
        "fixed": lambda: st.binary(min_size=schema["size"], max_size=schema["size"]),
        "array": lambda: st.lists(_strategy(schema["items"], named), max_size=4),
        "map": lambda: st.dictionaries(st.text(max_size=8), _strategy(schema["values"], named), max_size=4),
        "record": lambda: st.fixed_dictionaries({f["name"]: _strategy(f["type"], named) for f in schema["fields"]}),
    }[t]()
    if t in ("record", "enum", "fixed"):
        named[schema["name"]] = out
    return out


ROWS = _strategy(EVERYTHING, {})
PARSED = fastavro.parse_schema(EVERYTHING)
READ = compile_reader(EVERYTHING)


def encode(record) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, PARSED, record)
    return out.getvalue()


def fastavro_read(data: bytes):
    return fastavro.schemaless_reader(io.BytesIO(data), PARSED, None)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS)
def test_every_avro_type_reads_as_fastavro_reads_it(row):
    data = encode(row)
    assert READ(data, 0) == fastavro_read(data)
    assert READ(b"\x00\x00\x00\x00\x07" + data, 5) == fastavro_read(data)  # after the wire format's header


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS, st.data())
def test_a_truncated_or_corrupted_body_raises_or_reads_what_fastavro_reads(row, data):
    body = bytearray(encode(row))
    cut = data.draw(st.integers(0, len(body) - 1))
    for broken in (bytes(body[:cut]), _flipped(body, data)):
        try:
            got = READ(broken, 0)
        except ValueError:
            continue  # a malformed body: the applier sends the record to the dead-letter topic
        assert repr(got) == repr(fastavro_read(broken))  # repr: a corrupted double may be NaN


def _flipped(body: bytearray, data) -> bytes:
    out = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(out) - 1))
        out[i] = data.draw(st.integers(0, 255))
    return bytes(out)


@pytest.mark.parametrize("junk", [
    b"", b"\xff" * 12, b"\x02", b"\x01\x00", b"\x00\x00\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    b"\x00\x01\x00\x00" + b"\xff\xff\xff\xff\x0f", bytes(range(256)),
])
def test_junk_raises_value_error(junk):
    with pytest.raises(ValueError):
        READ(junk, 0)


def test_a_longer_body_than_the_schema_reads_is_refused():
    with pytest.raises(ValueError, match="bytes more than its schema reads"):
        compile_reader("long")(b"\x02\x02", 0)


@pytest.mark.parametrize("schema", [
    {"type": "record", "name": "R", "fields": [{"name": "v", "type": {"type": "bytes", "logicalType": "decimal",
                                                                      "precision": 12, "scale": 2}}]},
    {"type": "record", "name": "R", "fields": [{"name": "d", "type": {"type": "int", "logicalType": "date"}}]},
    {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]},  # recursive
    {"type": "record", "name": "R", "fields": [{"name": "x", "type": "Undefined"}]},
])
def test_schemas_it_is_not_built_for_are_left_to_fastavro(schema):
    assert compile_reader(schema) is None


def test_the_envelope_reader_reads_what_decode_uses_and_skips_the_rest():
    value = {"type": "record", "name": "Value", "fields": [
        {"name": "id", "type": "long"},
        {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}  # skipped in before: fine
    doc = {"type": "record", "name": "Envelope", "namespace": "x", "fields": [
        {"name": "before", "type": ["null", {"type": "record", "name": "Old", "fields": [
            {"name": "id", "type": "long"}]}]},
        {"name": "after", "type": ["null", {"type": "record", "name": "New", "fields": [{"name": "id", "type": "long"}]}]},
        {"name": "ignored", "type": ["null", value]},
        {"name": "source", "type": {"type": "record", "name": "Source", "fields": [
            {"name": "version", "type": "string"}, {"name": "ts_ms", "type": "long"},
            {"name": "snapshot", "type": [{"type": "string"}, "null"]}, {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"}, {"name": "lsn", "type": ["null", "long"]},
            {"name": "xmin", "type": ["null", "long"]}, {"name": "origin", "type": ["null", "string"]}]}},
        {"name": "transaction", "type": ["null", {"type": "record", "name": "block", "fields": [
            {"name": "id", "type": "string"}, {"name": "total_order", "type": "long"}]}]},
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"]},
    ]}
    record = {"before": None, "after": {"id": 7}, "ignored": {"id": 1, "when": 1_700_000_000_000},
              "source": {"version": "3.1", "ts_ms": 99, "snapshot": "false", "schema": "public", "table": "t",
                         "lsn": 123456789, "xmin": None, "origin": "reshard_rev_0"},
              "transaction": {"id": "5:1", "total_order": 1}, "op": "u", "ts_ms": 100}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(doc), record)
    read = compile_envelope(doc)
    assert read is not None
    assert read(out.getvalue(), 0) == {
        "before": None, "after": {"id": 7}, "op": "u",
        "source": {"ts_ms": 99, "schema": "public", "table": "t", "lsn": 123456789, "origin": "reshard_rev_0"}}
    key = {"type": "record", "name": "Key", "fields": [{"name": "id", "type": "long"}]}
    assert compile_envelope(key) is None  # not an envelope: keys are read by fastavro


def test_an_envelope_it_is_not_built_for_says_why():
    row = {"type": "record", "name": "Value", "fields": [
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}}]}
    doc = {"type": "record", "name": "Envelope", "fields": [
        {"name": "before", "type": ["null", row]}, {"name": "after", "type": ["null", "Value"]},
        {"name": "source", "type": {"type": "record", "name": "Source", "fields": [
            {"name": "table", "type": "string"}, {"name": "lsn", "type": "long"}]}},
        {"name": "op", "type": "string"}]}
    with pytest.raises(Unsupported, match="logical type decimal"):
        compile_envelope(doc)


def _opt(t):
    return {"type": ["null", t], "default": None}


# the envelope Debezium 3 writes through the Apicurio converter (as read back from the registry),
# around a row of EVERYTHING's types
DEBEZIUM_ROW = {**EVERYTHING, "name": "Value", "namespace": "reshard.m.fwd.source1.public.t"}
DEBEZIUM = {"type": "record", "name": "Envelope", "namespace": "reshard.m.fwd.source1.public.t", "fields": [
    {"name": "before", **_opt(DEBEZIUM_ROW)},
    {"name": "after", **_opt("Value")},
    {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
                                "fields": [
        {"name": "version", "type": "string"}, {"name": "connector", "type": "string"},
        {"name": "name", "type": "string"}, {"name": "ts_ms", "type": "long"},
        {"name": "snapshot", "type": [{"type": "string", "connect.name": "io.debezium.data.Enum"}, "null"],
         "default": "false"},
        {"name": "db", "type": "string"}, {"name": "sequence", **_opt("string")},
        {"name": "ts_us", **_opt("long")}, {"name": "ts_ns", **_opt("long")},
        {"name": "schema", "type": "string"}, {"name": "table", "type": "string"},
        {"name": "txId", **_opt("long")}, {"name": "lsn", **_opt("long")}, {"name": "xmin", **_opt("long")},
        {"name": "origin", **_opt("string")}, {"name": "origin_lsn", **_opt("long")}]}},
    {"name": "transaction", **_opt({"type": "record", "name": "block", "namespace": "event", "fields": [
        {"name": "id", "type": "string"}, {"name": "total_order", "type": "long"},
        {"name": "data_collection_order", "type": "long"}]})},
    {"name": "op", "type": "string"},
    {"name": "ts_ms", **_opt("long")}, {"name": "ts_us", **_opt("long")}, {"name": "ts_ns", **_opt("long")},
]}
DEBEZIUM_PARSED = fastavro.parse_schema(DEBEZIUM)
READ_ENVELOPE = compile_envelope(DEBEZIUM)
LONGS = st.integers(-2**63, 2**63 - 1)
SOURCES = st.fixed_dictionaries({
    "version": st.text(max_size=12), "connector": st.just("postgresql"), "name": st.text(max_size=30),
    "ts_ms": LONGS, "snapshot": st.sampled_from(["true", "false", "last", None]), "db": st.text(max_size=10),
    "sequence": st.none() | st.text(max_size=40), "ts_us": st.none() | LONGS, "ts_ns": st.none() | LONGS,
    "schema": st.text(max_size=10), "table": st.text(max_size=10), "txId": st.none() | LONGS,
    "lsn": st.none() | LONGS, "xmin": st.none() | LONGS, "origin": st.none() | st.text(max_size=20),
    "origin_lsn": st.none() | LONGS})
ENVELOPES = st.fixed_dictionaries({
    "before": st.none() | ROWS, "after": st.none() | ROWS, "source": SOURCES,
    "transaction": st.none() | st.fixed_dictionaries({"id": st.text(max_size=10), "total_order": LONGS,
                                                      "data_collection_order": LONGS}),
    "op": st.sampled_from(["c", "u", "d", "r", "t"]), "ts_ms": st.none() | LONGS, "ts_us": st.none() | LONGS,
    "ts_ns": st.none() | LONGS})


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(ENVELOPES, st.data())
def test_debeziums_envelope_reads_as_fastavro_reads_the_fields_decode_uses(envelope, data):
    out = io.BytesIO()
    fastavro.schemaless_writer(out, DEBEZIUM_PARSED, envelope)
    body = out.getvalue()
    full = fastavro.schemaless_reader(io.BytesIO(body), DEBEZIUM_PARSED, None)
    want = {"before": full["before"], "after": full["after"], "op": full["op"],
            "source": {k: full["source"][k] for k in ("ts_ms", "schema", "table", "lsn", "origin")}}
    assert READ_ENVELOPE(b"\x00\x00\x00\x00\x01" + body, 5) == want
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(ValueError):
        READ_ENVELOPE(body[:cut], 0)  # a truncated envelope never reads as one
