"""Debezium change events (JSON with schemas) -> ``ChangeEvent`` values reshard can apply.

Values are converted by their Connect schema's semantic type (dates as days, times
and timestamps as epoch units, decimals as strings, ...), so what reaches the target
is what the source holds. Anything that is not a well-formed Debezium change event
raises ``DecodeError`` with the reason; the applier sends it to the dead-letter topic.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

PLACEHOLDER = "__debezium_unavailable_value"
_PLACEHOLDER_HEX = PLACEHOLDER.encode().hex()
_PLACEHOLDER_B64 = base64.b64encode(PLACEHOLDER.encode()).decode()
EPOCH = dt.datetime(1970, 1, 1)
EPOCH_DATE = dt.date(1970, 1, 1)
OPS = {"c", "u", "d", "r", "t"}


class DecodeError(ValueError):
    """The record is not a change event reshard can apply; the message says why."""


@dataclass(frozen=True)
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


def convert(value: Any, schema: dict) -> Any:
    """One field value, by its Connect schema (type + semantic name)."""
    if value is None:
        return None
    name = schema.get("name")
    if name == "io.debezium.time.Date":
        return EPOCH_DATE + dt.timedelta(days=int(value))
    if name == "io.debezium.time.Timestamp":
        return EPOCH + dt.timedelta(milliseconds=int(value))
    if name == "io.debezium.time.MicroTimestamp":
        return EPOCH + dt.timedelta(microseconds=int(value))
    if name == "io.debezium.time.NanoTimestamp":
        return EPOCH + dt.timedelta(microseconds=int(value) // 1000)
    if name == "io.debezium.time.Time":
        return (EPOCH + dt.timedelta(milliseconds=int(value))).time()
    if name == "io.debezium.time.MicroTime":
        return (EPOCH + dt.timedelta(microseconds=int(value))).time()
    if name == "io.debezium.time.NanoTime":
        return (EPOCH + dt.timedelta(microseconds=int(value) // 1000)).time()
    if name == "org.apache.kafka.connect.data.Decimal":
        return _decimal_from_bytes(value, int(schema.get("parameters", {}).get("scale", 0)))
    if name == "io.debezium.data.VariableScaleDecimal":
        return _decimal_from_bytes(value["value"], int(value["scale"]))
    if schema.get("type") == "array":
        items = schema.get("items", {})
        return [convert(v, items) for v in value]
    if schema.get("type") == "bytes" and isinstance(value, str):
        return base64.b64decode(value)
    return value


def _row_schema(envelope_schema: dict, field: str) -> dict | None:
    for f in envelope_schema.get("fields", []):
        if f.get("field") == field:
            return f
    return None


def decode(key: bytes | None, value: bytes | None) -> ChangeEvent | None:
    """Decode one Kafka record. Returns None for records that carry no change (tombstones)."""
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"value is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "payload" not in doc or "schema" not in doc:
        raise DecodeError("value is not a Debezium envelope with schema (expected {schema, payload})")
    payload, schema = doc["payload"], doc["schema"]
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
    row_schema = _row_schema(schema, field)
    data = payload.get(field)
    if row_schema is None or not isinstance(data, dict):
        raise DecodeError(f"{table}: op {op} without a '{field}' row")
    fields = row_schema.get("fields") or []
    columns = tuple(f["field"] for f in fields)
    if op == "d":
        return ChangeEvent(table, op, key_doc, None, frozenset(), lsn, columns, origin)
    row: dict[str, Any] = {}
    unavailable = set()
    for f in fields:
        name = f["field"]
        if name not in data:
            raise DecodeError(f"{table}: column {name} is in the schema but not in the row")
        v = data[name]
        if _unavailable(v):
            unavailable.add(name)
            continue
        try:
            row[name] = convert(v, f)
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
            raise DecodeError(f"{table}.{name}: cannot convert {v!r} ({f.get('name') or f.get('type')}): {exc}") from None
    return ChangeEvent(table, op, key_doc, row, frozenset(unavailable), lsn, columns, origin)
