"""Debezium change events -> ``ChangeEvent`` values reshard can apply.

Two encodings, told apart by their first byte: Avro in the Confluent wire format (magic
byte 0 and a schema id, see ``cdc_applier.avro``), the default, and JSON with schemas
(``{"schema":…,"payload":…}``) for clusters without a registry. Both reach the same
payload (before/after/source/op) and the same row plans, so everything after decoding is
identical whatever the topic's encoding.

Values are converted by their Connect schema's semantic type (dates as days, times
and timestamps as epoch units, decimals as strings, ...), so what reaches the target
is what the source holds. Anything that is not a well-formed Debezium change event
raises ``DecodeError`` with the reason; the applier sends it to the dead-letter topic.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from reshard.cdc_applier import avro

PLACEHOLDER = "__debezium_unavailable_value"
_PLACEHOLDER_HEX = PLACEHOLDER.encode().hex()
_PLACEHOLDER_B64 = base64.b64encode(PLACEHOLDER.encode()).decode()
_PLACEHOLDER_BYTES = PLACEHOLDER.encode()
NONE_UNAVAILABLE: frozenset[str] = frozenset()
EPOCH = dt.datetime(1970, 1, 1)
EPOCH_DATE = dt.date(1970, 1, 1)
OPS = {"c", "u", "d", "r", "t"}


class DecodeError(ValueError):
    """The record is not a change event reshard can apply; the message says why."""


@dataclass(slots=True)  # one per record: slots, not frozen, because frozen init is slow
class ChangeEvent:
    table: str  # "schema.table" on the source
    op: str  # c(reate) u(pdate) d(elete) r(ead) t(runcate)
    key: dict[str, Any]  # primary-key columns, as Debezium keyed the record
    row: dict[str, Any] | None  # the new row (None for deletes and truncates)
    unavailable: frozenset[str]  # unchanged TOAST columns Debezium could not send
    lsn: int  # the change's WAL position; increases per key in commit order
    columns: tuple[str, ...]  # the columns the source table had when this change was decoded
    origin: str | None = None  # the replication origin of the transaction (reshard's own writers set one)
    ts_ms: int | None = None  # when the transaction committed on the source (Debezium's source.ts_ms)

    @property
    def is_delete(self) -> bool:
        return self.op == "d"


def _unavailable(value: Any) -> bool:
    """Debezium's placeholder for an unchanged TOAST value: the text, or in a bytea column the
    text's bytes (Avro) or their hex or base64 (JSON), or an array holding it."""
    if isinstance(value, str):
        return value in (PLACEHOLDER, _PLACEHOLDER_HEX, _PLACEHOLDER_B64)
    if isinstance(value, bytes):
        return value == _PLACEHOLDER_BYTES
    if isinstance(value, list):
        return any(_unavailable(v) for v in value)
    return False


def _decimal_from_bytes(raw: str | bytes, scale: int) -> Decimal:
    unscaled = int.from_bytes(base64.b64decode(raw) if isinstance(raw, str) else raw, "big", signed=True)
    return Decimal(unscaled).scaleb(-scale)


def _epoch_plus(unit: str, divisor: int = 1, as_time: bool = False) -> Callable[[Any], Any]:
    def conv(v: Any) -> Any:
        t = EPOCH + dt.timedelta(**{unit: int(v) // divisor})
        return t.time() if as_time else t
    return conv


_BY_NAME: dict[str, Callable[[Any], Any]] = {
    "io.debezium.time.Date": lambda v: EPOCH_DATE + dt.timedelta(days=int(v)),
    "io.debezium.time.Timestamp": _epoch_plus("milliseconds"),
    "io.debezium.time.MicroTimestamp": _epoch_plus("microseconds"),
    "io.debezium.time.NanoTimestamp": _epoch_plus("microseconds", 1000),
    "io.debezium.time.Time": _epoch_plus("milliseconds", as_time=True),
    "io.debezium.time.MicroTime": _epoch_plus("microseconds", as_time=True),
    "io.debezium.time.NanoTime": _epoch_plus("microseconds", 1000, as_time=True),
    "io.debezium.data.VariableScaleDecimal": lambda v: _decimal_from_bytes(v["value"], int(v["scale"])),
}



def converter(schema: dict) -> Callable[[Any], Any] | None:
    """How to turn one field's JSON value into what the target column takes, chosen once
    per field from its Connect schema (type + semantic name); None when it is as sent."""
    name = schema.get("name")
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name == "org.apache.kafka.connect.data.Decimal":
        scale = int(schema.get("parameters", {}).get("scale", 0))
        return lambda v: _decimal_from_bytes(v, scale)
    if schema.get("type") == "array":
        item = converter(schema.get("items", {}))
        return (lambda v: [None if x is None else item(x) for x in v]) if item else None
    if schema.get("type") == "bytes":
        return lambda v: base64.b64decode(v) if isinstance(v, str) else v
    return None


SCALARS = frozenset({"int", "long", "float", "double", "boolean",  # Avro's
                     "int8", "int16", "int32", "int64", "float32", "float64"})  # Connect's (JSON)


@dataclass(frozen=True)
class _RowPlan:
    """A row schema, read once: its columns, each column's converter, and which columns may hold
    Debezium's placeholder for an unchanged TOAST value (not numbers or booleans)."""

    columns: tuple[str, ...]
    fields: tuple[tuple[str, Callable[[Any], Any] | None, str], ...]  # name, converter, type for messages
    checked: tuple[str, ...]  # the columns that may hold the placeholder
    converted: tuple[tuple[str, Callable[[Any], Any], str], ...]  # the columns with a converter

    @classmethod
    def of(cls, fields: list[tuple[str, Callable[[Any], Any] | None, str, str]]) -> _RowPlan:
        """From (name, converter, type for messages, base type) per column."""
        return cls(tuple(f[0] for f in fields), tuple(f[:3] for f in fields),
                   tuple(f[0] for f in fields if f[3] not in SCALARS),
                   tuple((name, conv, kind) for name, conv, kind, _ in fields if conv is not None))


def _row_plan(envelope_schema: dict, field: str) -> _RowPlan | None:
    for f in envelope_schema.get("fields", []):
        if f.get("field") == field:
            return _RowPlan.of([(x["field"], converter(x), x.get("name") or x.get("type"), x.get("type"))
                                for x in f.get("fields") or []])
    return None


def avro_converter(schema: Any) -> Callable[[Any], Any] | None:
    """The same choice for an Avro field type that Debezium's Connect schema became (the
    Apicurio converter keeps the semantic name as ``connect.name``; Avro logical types are
    already converted by fastavro)."""
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        schema = branches[0] if len(branches) == 1 else None
    if not isinstance(schema, dict):
        return None
    name = schema.get("connect.name")
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name == "org.apache.kafka.connect.data.Decimal" and "logicalType" not in schema:
        scale = int((schema.get("connect.parameters") or {}).get("scale", 0))
        return lambda v: _decimal_from_bytes(v, scale)
    if schema.get("type") == "array":
        item = avro_converter(schema.get("items"))
        return (lambda v: [None if x is None else item(x) for x in v]) if item else None
    return None


def _avro_kind(schema: Any) -> str:
    if isinstance(schema, list):
        schema = next((b for b in schema if b != "null"), schema)
    if isinstance(schema, dict):
        return str(schema.get("connect.name") or schema.get("logicalType") or schema.get("type"))
    return str(schema)


def _avro_base(schema: Any) -> str:
    """The Avro type under the optional union and the annotations (``long``, ``string``, ``record``)."""
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        schema = branches[0] if len(branches) == 1 else "union"
    if isinstance(schema, dict):
        return str(schema.get("type"))
    return str(schema)


def _avro_records(schema: Any, into: dict[str, dict], namespace: str = "") -> None:
    """Every named record of a schema document by its full name (Avro refers to a record
    a second time by name, as ``after`` does to ``before``'s ``Value``)."""
    if isinstance(schema, list):
        for b in schema:
            _avro_records(b, into, namespace)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            ns = schema.get("namespace", namespace)
            name = schema["name"]
            into[name if "." in name else f"{ns}.{name}" if ns else name] = schema
            for f in schema.get("fields", []):
                _avro_records(f["type"], into, ns)
        elif schema.get("type") in ("array", "map"):
            _avro_records(schema.get("items") or schema.get("values"), into, namespace)


def _avro_plans(doc: dict) -> dict[str, _RowPlan | None]:
    records: dict[str, dict] = {}
    _avro_records(doc, records, doc.get("namespace", ""))
    plans: dict[str, _RowPlan | None] = {}
    for field in ("before", "after"):
        plans[field] = None
        for f in doc.get("fields", []):
            if f.get("name") != field:
                continue
            branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
            ns = doc.get("namespace", "")
            row = next((records.get(b) or records.get(f"{ns}.{b}") if isinstance(b, str) else b
                        for b in branches if b != "null"), None)
            if isinstance(row, dict) and row.get("type") == "record":
                plans[field] = _RowPlan.of([(x["name"], avro_converter(x["type"]), _avro_kind(x["type"]),
                                             _avro_base(x["type"])) for x in row.get("fields", [])])
    return plans


def _avro_record(data: bytes, schemas: avro.WriterSchemas | None, what: str) -> tuple[Any, int]:
    """The record (an envelope is read by its schema's compiled reader when it has one,
    with fastavro otherwise) and its schema id."""
    sid = avro.schema_id(data)
    if sid is None:
        raise DecodeError(f"{what} is neither JSON nor Avro in the Confluent wire format")
    if schemas is None:
        raise DecodeError(f"{what} is Avro (schema id {sid}) but no kafka.schema_registry_url is configured "
                          "to read its schema")
    try:
        reader = schemas.envelope_reader(sid) if what == "value" else None
        if reader is not None:
            return reader(data, avro.HEADER.size), sid
        return avro.read(data, schemas.parsed(sid)), sid
    except avro.UnknownSchema as exc:
        raise DecodeError(f"{what}: {exc}") from None
    except (ValueError, EOFError, IndexError, TypeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{what} does not decode with its writer schema {sid}: {exc!r}") from None


def _avro_envelope(value: bytes, schemas: avro.WriterSchemas | None) -> tuple[Any, dict[str, _RowPlan | None]]:
    payload, sid = _avro_record(value, schemas, "value")
    assert schemas is not None
    plans = schemas.derived.get(("plans", sid))
    if plans is None:
        raw = schemas.raw(sid)
        plans = schemas.derived[("plans", sid)] = _avro_plans(raw) if isinstance(raw, dict) else {}
    return payload, plans


_SCHEMA_HEAD, _PAYLOAD_SEP = b'{"schema":', b',"payload":'
_PLANS: dict[bytes, dict[str, _RowPlan | None]] = {}  # schema text -> row plans: one entry per table version
_PLANS_MAX = 512
_RECENT: list[bytes] = []  # most recently seen schema texts, newest first
_RECENT_MAX = 8


def _plans(schema: dict) -> dict[str, _RowPlan | None]:
    return {"before": _row_plan(schema, "before"), "after": _row_plan(schema, "after")}


def _fast_parse(value: bytes) -> tuple[dict, dict[str, _RowPlan | None]] | None:
    """(payload, row plans), parsing only the payload when the schema was seen before.

    Kafka Connect's JsonConverter writes ``{"schema":…,"payload":…}`` compactly, and the
    schema repeats in every record of a table version. The first ``,"payload":`` splits
    the two exactly when both halves parse (a split inside a string of the schema leaves
    it unparseable). Anything else returns None and takes the full parse."""
    if not value.startswith(_SCHEMA_HEAD) or not value.endswith(b"}"):
        return None
    for schema_text in _RECENT:  # the schemas of the last tables seen: a prefix compare, no search
        i = len(_SCHEMA_HEAD) + len(schema_text)
        if value.startswith(_PAYLOAD_SEP, i) and value.startswith(schema_text, len(_SCHEMA_HEAD)):
            plans = _PLANS.get(schema_text)
            if plans is not None:
                payload = _payload(value, i)
                if payload is not None:
                    return payload, plans
            break
    i = value.find(_PAYLOAD_SEP)
    if i < 0:
        return None
    schema_text = value[len(_SCHEMA_HEAD):i]
    plans = _PLANS.get(schema_text)
    if plans is None:
        try:
            schema = orjson.loads(schema_text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(schema, dict):
            return None
        plans = _plans(schema)
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[schema_text] = plans
    _RECENT.insert(0, schema_text)
    del _RECENT[_RECENT_MAX:]
    payload = _payload(value, i)
    return (payload, plans) if payload is not None else None


def _payload(value: bytes, i: int) -> Any:
    try:
        return orjson.loads(memoryview(value)[i + len(_PAYLOAD_SEP):-1])
    except orjson.JSONDecodeError:
        return None


def _json_envelope(value: bytes) -> tuple[Any, dict[str, _RowPlan | None]]:
    fast = _fast_parse(value)
    if fast is not None:
        return fast
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"value is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "payload" not in doc or "schema" not in doc:
        raise DecodeError("value is not a Debezium envelope with schema (expected {schema, payload})")
    schema = doc["schema"]
    return doc["payload"], (_plans(schema) if isinstance(schema, dict) else {})


def _key_doc(key: bytes, schemas: avro.WriterSchemas | None, row: Any) -> Any:
    if key[:1] == b"\x00":
        # The key's columns are in the row the event carries (``before`` of a delete): take
        # them from there instead of decoding the key (half of an event's Avro decoding)
        sid = avro.schema_id(key)
        if sid is not None and schemas is not None and isinstance(row, dict):
            fields = schemas.derived.get(("key", sid))
            if fields is None:
                try:
                    doc = schemas.raw(sid)
                except avro.UnknownSchema as exc:
                    raise DecodeError(f"key: {exc}") from None
                fields = schemas.derived[("key", sid)] = tuple(
                    f["name"] for f in doc.get("fields", [])) if isinstance(doc, dict) else ()
            if len(fields) == 1:  # the usual single-column key: no loop
                v = row.get(fields[0])
                if v is not None:
                    return {fields[0]: v}
            elif fields and all(row.get(f) is not None for f in fields):
                return {f: row[f] for f in fields}
        return _avro_record(key, schemas, "key")[0]
    try:
        doc = orjson.loads(key)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"key is not JSON: {exc}") from None
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        return doc["payload"]
    return doc


def decode(key: bytes | None, value: bytes | None, schemas: avro.WriterSchemas | None = None) -> ChangeEvent | None:
    """Decode one Kafka record (Avro when it starts with the wire format's magic byte, read
    with ``schemas``; JSON otherwise). Returns None for records that carry no change
    (tombstones)."""
    if value is None:
        return None
    if value[:1] == b"\x00":
        payload, plans = _avro_envelope(value, schemas)
    else:
        payload, plans = _json_envelope(value)
    if not isinstance(payload, dict):
        raise DecodeError("payload is not an object")
    op = payload.get("op")
    if op not in OPS:
        raise DecodeError(f"unknown or missing op {op!r}")
    source = payload.get("source")
    if not isinstance(source, dict) or not source.get("table") or source.get("lsn") is None:
        raise DecodeError("source block lacks table or lsn")
    table = f"{source.get('schema') or 'public'}.{source['table']}"
    try:
        lsn = int(source["lsn"])
    except (TypeError, ValueError):
        raise DecodeError(f"source.lsn {source['lsn']!r} is not an integer") from None
    origin = source.get("origin") or None
    ts_ms = source.get("ts_ms")
    if op == "t":
        return ChangeEvent(table, op, {}, None, frozenset(), lsn, (), origin, ts_ms)
    if key is None:
        raise DecodeError(f"{table}: record has no key (a table without a primary key?)")
    key_doc = _key_doc(key, schemas, payload.get("before" if op == "d" else "after"))
    if not isinstance(key_doc, dict) or not key_doc:
        raise DecodeError(f"{table}: key {key_doc!r} is not an object of primary-key columns")

    field = "before" if op == "d" else "after"
    plan = plans.get(field)
    data = payload.get(field)
    if plan is None or not isinstance(data, dict):
        raise DecodeError(f"{table}: op {op} without a '{field}' row")
    if op == "d":
        return ChangeEvent(table, op, key_doc, None, NONE_UNAVAILABLE, lsn, plan.columns, origin, ts_ms)
    if len(data) == len(plan.columns):
        row, unavailable = data, NONE_UNAVAILABLE  # the decoded row is this event's own: changed in place
        for name in plan.checked:
            try:
                v = row[name]
            except KeyError:
                break  # not the schema's columns: the full pass below says which
            if v is not None and _unavailable(v):
                unavailable = unavailable | {name}
        else:
            for name in unavailable:
                del row[name]
            for name, conv, kind in plan.converted:
                v = row.get(name)
                if v is not None and name not in unavailable:
                    try:
                        row[name] = conv(v)
                    except (TypeError, ValueError, KeyError, ArithmeticError, binascii.Error) as exc:
                        raise DecodeError(f"{table}.{name}: cannot convert {v!r} ({kind}): {exc}") from None
            return ChangeEvent(table, op, key_doc, row, unavailable, lsn, plan.columns, origin, ts_ms)
    return _row_by_column(table, op, key_doc, data, plan, lsn, origin, ts_ms)


def _row_by_column(table: str, op: str, key_doc: dict, data: dict, plan: _RowPlan, lsn: int, origin: str | None,
                   ts_ms: int | None) -> ChangeEvent:
    """The row a column at a time, for a row that is not exactly its schema's columns (says which is missing)."""
    row: dict[str, Any] = {}
    unavailable = set()
    for name, conv, kind in plan.fields:
        try:
            v = data[name]
        except KeyError:
            raise DecodeError(f"{table}: column {name} is in the schema but not in the row") from None
        if v is None:
            row[name] = None
            continue
        if _unavailable(v):
            unavailable.add(name)
            continue
        try:
            row[name] = conv(v) if conv is not None else v
        except (TypeError, ValueError, KeyError, ArithmeticError, binascii.Error) as exc:
            raise DecodeError(f"{table}.{name}: cannot convert {v!r} ({kind}): {exc}") from None
    return ChangeEvent(table, op, key_doc, row, frozenset(unavailable), lsn, plan.columns, origin, ts_ms)
