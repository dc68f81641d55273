"""Debezium change events (JSON with schemas) -> ``ChangeEvent`` values reshard can apply.

Values are converted by their Connect schema's semantic type (dates as days, times
and timestamps as epoch units, decimals as strings, ...), so what reaches the target
is what the source holds. Anything that is not a well-formed Debezium change event
raises ``DecodeError`` with the reason; the applier sends it to the dead-letter topic.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

import orjson

PLACEHOLDER = "__debezium_unavailable_value"
_PLACEHOLDER_HEX = PLACEHOLDER.encode().hex()
_PLACEHOLDER_B64 = base64.b64encode(PLACEHOLDER.encode()).decode()
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

    @property
    def is_delete(self) -> bool:
        return self.op == "d"


def _unavailable(value: Any) -> bool:
    if isinstance(value, str):
        return value in (PLACEHOLDER, _PLACEHOLDER_HEX, _PLACEHOLDER_B64)
    if isinstance(value, list):
        return any(_unavailable(v) for v in value)
    return False


def _decimal_from_bytes(raw: str, scale: int) -> Decimal:
    unscaled = int.from_bytes(base64.b64decode(raw), "big", signed=True)
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


@dataclass(frozen=True)
class _RowPlan:
    """A row schema, read once: its columns and each column's converter."""

    columns: tuple[str, ...]
    fields: tuple[tuple[str, Callable[[Any], Any] | None, str], ...]  # name, converter, type for messages


def _row_plan(envelope_schema: dict, field: str) -> _RowPlan | None:
    for f in envelope_schema.get("fields", []):
        if f.get("field") == field:
            fields = f.get("fields") or []
            return _RowPlan(tuple(x["field"] for x in fields),
                            tuple((x["field"], converter(x), x.get("name") or x.get("type")) for x in fields))
    return None


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
            payload = _payload(value, i) if plans is not None else None
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


def decode(key: bytes | None, value: bytes | None) -> ChangeEvent | None:
    """Decode one Kafka record. Returns None for records that carry no change (tombstones)."""
    if value is None:
        return None
    fast = _fast_parse(value)
    if fast is not None:
        payload, plans = fast
    else:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"value is not JSON: {exc}") from None
        if not isinstance(doc, dict) or "payload" not in doc or "schema" not in doc:
            raise DecodeError("value is not a Debezium envelope with schema (expected {schema, payload})")
        payload, schema = doc["payload"], doc["schema"]
        plans = _plans(schema) if isinstance(schema, dict) else {}
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
    if op == "t":
        return ChangeEvent(table, op, {}, None, frozenset(), lsn, (), origin)
    if key is None:
        raise DecodeError(f"{table}: record has no key (a table without a primary key?)")
    try:
        key_doc = orjson.loads(key)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"key is not JSON: {exc}") from None
    if isinstance(key_doc, dict) and "payload" in key_doc and "schema" in key_doc:
        key_doc = key_doc["payload"]
    if not isinstance(key_doc, dict) or not key_doc:
        raise DecodeError(f"{table}: key {key_doc!r} is not an object of primary-key columns")

    field = "before" if op == "d" else "after"
    plan = plans.get(field)
    data = payload.get(field)
    if plan is None or not isinstance(data, dict):
        raise DecodeError(f"{table}: op {op} without a '{field}' row")
    if op == "d":
        return ChangeEvent(table, op, key_doc, None, frozenset(), lsn, plan.columns, origin)
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
    return ChangeEvent(table, op, key_doc, row, frozenset(unavailable), lsn, plan.columns, origin)
