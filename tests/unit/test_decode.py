"""Debezium envelopes (the shape Debezium 3.6 emits with JSON + schemas) into ChangeEvents."""

import base64
import datetime as dt
import json
from decimal import Decimal

import pytest

from reshard.cdc_applier.decode import PLACEHOLDER, DecodeError, decode

FIELDS = [
    {"type": "int64", "optional": False, "field": "id"},
    {"type": "string", "optional": True, "field": "name"},
    {"type": "string", "optional": True, "field": "bal"},
    {"type": "string", "optional": True, "name": "io.debezium.time.ZonedTimestamp", "field": "ts"},
    {"type": "string", "optional": True, "name": "io.debezium.data.Json", "field": "attrs"},
    {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "field": "d"},
    {"type": "int64", "optional": True, "name": "io.debezium.time.MicroTimestamp", "field": "lts"},
    {"type": "array", "items": {"type": "int32"}, "optional": True, "field": "arr"},
    {"type": "bytes", "optional": True, "name": "org.apache.kafka.connect.data.Decimal",
     "parameters": {"scale": "2"}, "field": "dec"},
]


def envelope(op, before=None, after=None, lsn=22195456, table="accounts"):
    schema = {"type": "struct", "fields": [
        {"type": "struct", "fields": FIELDS, "optional": True, "field": "before"},
        {"type": "struct", "fields": FIELDS, "optional": True, "field": "after"},
        {"type": "struct", "fields": [], "field": "source"},
        {"type": "string", "field": "op"},
    ]}
    payload = {"before": before, "after": after, "op": op, "ts_ms": 1,
               "source": {"version": "3.6.3.Final", "connector": "postgresql", "schema": "public",
                          "table": table, "txId": 728, "lsn": lsn, "sequence": "[null,\"22195456\"]"}}
    return json.dumps({"schema": schema, "payload": payload}).encode()


ROW = {"id": 1, "name": "n1", "bal": "2.50", "ts": "2026-11-21T07:53:52.826963Z", "attrs": "{\"g\": 1}",
       "d": 19756, "lts": 1_000_000, "arr": [1, 2], "dec": base64.b64encode((-12345).to_bytes(2, "big", signed=True)).decode()}


def test_update_converts_by_semantic_type():
    ev = decode(b'{"id":1}', envelope("u", after=ROW))
    assert ev.table == "public.accounts" and ev.op == "u" and ev.lsn == 22195456
    assert ev.key == {"id": 1}
    assert ev.row["d"] == dt.date(2024, 2, 3)
    assert ev.row["lts"] == dt.datetime(1970, 1, 1, 0, 0, 1)
    assert ev.row["ts"] == "2026-11-21T07:53:52.826963Z"
    assert ev.row["dec"] == Decimal("-123.45")
    assert ev.row["arr"] == [1, 2]
    assert ev.unavailable == frozenset()
    assert ev.columns[0] == "id"


def test_unchanged_toast_placeholder_is_never_a_value():
    row = dict(ROW, name=PLACEHOLDER, arr=[PLACEHOLDER])
    ev = decode(b'{"id":1}', envelope("u", after=row))
    assert ev.unavailable == {"name", "arr"}
    assert "name" not in ev.row and "arr" not in ev.row


def test_delete_uses_the_key_and_tombstones_are_nothing():
    ev = decode(b'{"id":3}', envelope("d", before={**{f["field"]: None for f in FIELDS}, "id": 3}))
    assert ev.is_delete and ev.key == {"id": 3} and ev.row is None
    assert decode(b'{"id":3}', None) is None


def test_truncate_is_decoded_for_the_applier_to_refuse():
    ev = decode(None, envelope("t"))
    assert ev.op == "t"


@pytest.mark.parametrize("key,value,reason", [
    (b'{"id":1}', b"not json", "not JSON"),
    (b'{"id":1}', b'{"payload": {}}', "envelope with schema"),
    (b'{"id":1}', envelope("x", after=ROW), "unknown or missing op"),
    (None, envelope("u", after=ROW), "has no key"),
    (b"[]", envelope("u", after=ROW), "not an object of primary-key columns"),
    (b'{"id":1}', envelope("u", after=None), "without a 'after' row"),
    (b'{"id":1}', envelope("u", after={"id": 1}), "in the schema but not in the row"),
    # as many columns as the schema, one misnamed, an earlier one unchanged TOAST: the misnamed one is named
    (b'{"id":1}', envelope("u", after={**{k: v for k, v in ROW.items() if k != "attrs"}, "name": PLACEHOLDER,
                                       "atrs": "{}"}), "column attrs is in the schema but not in the row"),
    (b'{"id":1}', envelope("u", after=dict(ROW, d="soon")), "cannot convert"),
    (b'{"id":1}', envelope("u", after=ROW, lsn="zz"), "not an integer"),
])
def test_malformed_records_say_why(key, value, reason):
    with pytest.raises(DecodeError, match=reason):
        decode(key, value)


def compact(value: bytes) -> bytes:
    """The envelope as Kafka Connect's JsonConverter writes it: no spaces."""
    return json.dumps(json.loads(value), separators=(",", ":")).encode()


def test_compact_envelopes_decode_the_same_through_the_schema_cache():
    for op, kw in (("u", {"after": ROW}), ("c", {"after": dict(ROW, name=PLACEHOLDER)}),
                   ("d", {"before": {**{f["field"]: None for f in FIELDS}, "id": 3}})):
        value = envelope(op, **kw)
        assert decode(b'{"id":1}', compact(value)) == decode(b'{"id":1}', value)
        assert decode(b'{"id":1}', compact(value)) == decode(b'{"id":1}', value)  # second time: cached schema


def test_a_schema_text_that_looks_like_the_payload_split_still_decodes():
    doc = json.loads(envelope("u", after=ROW))
    doc["schema"]["fields"][1]["doc"] = ',"payload":{"op":"d"}'  # escaped in the JSON text: never a split point
    value = json.dumps(doc, separators=(",", ":")).encode()
    assert decode(b'{"id":1}', value) == decode(b'{"id":1}', envelope("u", after=ROW))
    with pytest.raises(DecodeError, match="cannot convert"):
        decode(b'{"id":1}', compact(envelope("u", after=dict(ROW, d="soon"))))
