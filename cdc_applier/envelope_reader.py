"""Debezium's Avro envelope, read by a program compiled once per writer schema.

fastavro's generic reader decodes every field of a record: the ~20 fields of Debezium's
``source`` block and the envelope's timestamps become Python objects the applier never
reads, each through a generic dispatch on its schema; it was the largest part of the
applier's CPU per event (about 30 µs of ~90 on this machine). Here a writer schema (an id
never changes) is compiled once into a small program that skips what ``decode`` does not
read (a length and an addition) and reads the rest into the values fastavro gives, and a
compiled interpreter (``_envelope.c``) runs it per record. The topics stay Debezium's
standard Avro, readable by any consumer.

A schema holding what this reader is not built for (an Avro logical type in a value it
reads, a named type referred to before its definition, a recursive record) gets no program:
``compile_envelope`` returns None and fastavro reads that schema's records, as it does when
the extension was not built. Malformed bodies raise ``ValueError`` (or
``UnicodeDecodeError``), as fastavro's would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

try:
    from reshard.cdc_applier._envelope import Program
except ImportError:  # built without a C compiler: fastavro reads every record
    Program = None

ENVELOPE_FIELDS = ("before", "after", "source", "op")  # what decode() reads of the envelope
SOURCE_FIELDS = ("ts_ms", "schema", "table", "lsn", "origin")  # ... and of its source block

# the opcodes of _envelope.c
SKIP_LONG, SKIP_BYTES, SKIP_FIXED, NULL, BOOL, LONG, FLOAT, DOUBLE, STRING, BYTES, FIXED, ENUM, UNION, RECORD, \
    ARRAY, MAP = range(1, 17)
_READ = {"null": [NULL], "boolean": [BOOL], "int": [LONG], "long": [LONG], "float": [FLOAT], "double": [DOUBLE],
         "bytes": [BYTES], "string": [STRING]}
_SKIP: dict[str, list[int]] = {"null": [], "boolean": [SKIP_FIXED, 1], "int": [SKIP_LONG], "long": [SKIP_LONG],
                               "float": [SKIP_FIXED, 4], "double": [SKIP_FIXED, 8], "bytes": [SKIP_BYTES],
                               "string": [SKIP_BYTES]}
NAMED = ("record", "error", "enum", "fixed")


class Unsupported(Exception):
    """The schema holds a shape this reader is not built for; fastavro reads it."""


class _Compiler:
    """Programs for the types of one schema document, its named types resolved."""

    def __init__(self) -> None:
        self.named: dict[str, dict] = {}
        self.namespace_of: dict[int, str] = {}
        self.consts: list[tuple] = []
        self.building: set[int] = set()  # records being compiled: a recursive one is refused

    def const(self, value: tuple) -> int:
        if value in self.consts:
            return self.consts.index(value)
        self.consts.append(value)
        return len(self.consts) - 1

    def resolve(self, schema: Any, namespace: str) -> tuple[Any, str]:
        """A type by name becomes its definition; a definition is remembered under its full name."""
        if isinstance(schema, str):
            if schema in _READ:
                return schema, namespace
            full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            found = self.named.get(full) or self.named.get(schema)
            if found is None:
                raise Unsupported(f"type {schema} is referred to before it is defined")
            return found, self.namespace_of[id(found)]
        if isinstance(schema, dict) and schema.get("type") in NAMED:
            ns = schema.get("namespace", namespace)
            name = schema["name"]
            full = name if "." in name or not ns else f"{ns}.{name}"
            self.named.setdefault(full, schema)
            self.namespace_of[id(schema)] = full.rsplit(".", 1)[0] if "." in full else ""
            return schema, self.namespace_of[id(schema)]
        if isinstance(schema, dict) and not isinstance(schema.get("type"), str):
            return self.resolve(schema.get("type"), namespace)  # {"type": {...}} or {"type": [...]}
        return schema, namespace

    def read(self, schema: Any, namespace: str, wanted: Iterable[str] | None = None) -> list[int]:
        """Code that pushes the value fastavro would read."""
        schema, namespace = self.resolve(schema, namespace)
        if isinstance(schema, str):
            return list(_READ[schema])
        if isinstance(schema, list):
            return self._union([self.read(b, namespace) for b in schema])
        if not isinstance(schema, dict):
            raise Unsupported(f"schema {schema!r}")
        if "logicalType" in schema:
            raise Unsupported(f"logical type {schema['logicalType']} (fastavro converts it)")
        kind = schema.get("type")
        if kind in _READ:
            return list(_READ[kind])
        if kind in ("record", "error"):
            return self._record(schema, namespace, wanted)
        if kind == "enum":
            return [ENUM, self.const(tuple(schema["symbols"]))]
        if kind == "fixed":
            return [FIXED, int(schema["size"])]
        if kind in ("array", "map"):
            body = self.read(schema["items" if kind == "array" else "values"], namespace)
            return [ARRAY if kind == "array" else MAP, len(body), 1, *body]
        raise Unsupported(f"type {kind!r}")

    def skip(self, schema: Any, namespace: str) -> list[int]:
        """Code that advances past the value, pushing nothing."""
        schema, namespace = self.resolve(schema, namespace)
        if isinstance(schema, str):
            return list(_SKIP[schema])
        if isinstance(schema, list):
            return self._union([self.skip(b, namespace) for b in schema])
        if not isinstance(schema, dict):
            raise Unsupported(f"schema {schema!r}")
        kind = schema.get("type")
        if kind in _SKIP:
            return list(_SKIP[kind])
        if kind in ("record", "error"):
            self._enter(schema)
            code = [op for f in schema["fields"] for op in self.skip(f["type"], namespace)]
            self.building.discard(id(schema))
            return code
        if kind == "enum":
            return [SKIP_LONG]
        if kind == "fixed":
            return [SKIP_FIXED, int(schema["size"])]
        if kind in ("array", "map"):
            body = self.skip(schema["items" if kind == "array" else "values"], namespace)
            return [ARRAY if kind == "array" else MAP, len(body), 0, *body]
        raise Unsupported(f"type {kind!r}")

    def _enter(self, schema: dict) -> None:
        if id(schema) in self.building:
            raise Unsupported(f"record {schema.get('name')} is recursive")
        self.building.add(id(schema))

    @staticmethod
    def _union(branches: list[list[int]]) -> list[int]:
        return [UNION, len(branches), *(len(b) for b in branches), *(op for b in branches for op in b)]

    def _record(self, schema: dict, namespace: str, wanted: Iterable[str] | None) -> list[int]:
        keep = None if wanted is None else set(wanted)
        self._enter(schema)
        code: list[int] = []
        names: list[str] = []
        for f in schema["fields"]:
            if keep is None or f["name"] in keep:
                code += self.read(f["type"], namespace)
                names.append(f["name"])
            else:
                code += self.skip(f["type"], namespace)
        self.building.discard(id(schema))
        return [*code, RECORD, self.const(tuple(names))]


def compile_reader(schema: Any) -> Callable[[bytes, int], Any] | None:
    """``read(data, pos)``: a whole value of ``schema`` from ``data[pos:]``, as fastavro reads it
    (which must end at the end of ``data``); None when this reader is not built for it."""
    if Program is None:
        return None
    doc = copy.deepcopy(schema)
    c = _Compiler()
    try:
        code = c.read(doc, doc.get("namespace", "") if isinstance(doc, dict) else "")
    except (Unsupported, KeyError, TypeError, ValueError):
        return None
    return Program(tuple(code), tuple(c.consts)).read


def compile_envelope(doc: Any) -> Callable[[bytes, int], dict] | None:
    """``read(data, pos)``: the Debezium envelope of writer schema ``doc`` from ``data[pos:]``,
    with the fields decode() reads (before, after, op; of source: ts_ms, schema, table, lsn,
    origin) as fastavro reads them; None when ``doc`` is no envelope (a key's schema) or the
    extension is missing. Raises ``Unsupported`` (saying why) for an envelope holding a shape
    this reader is not built for."""
    if Program is None or not isinstance(doc, dict) or doc.get("type") != "record":
        return None
    if not {"op", "source", "after"} <= {f.get("name") for f in doc.get("fields", []) if isinstance(f, dict)}:
        return None
    doc = copy.deepcopy(doc)  # the compiler keys named types by the identity of their definitions
    c = _Compiler()
    try:
        _, namespace = c.resolve(doc, doc.get("namespace", ""))
        c._enter(doc)
        code: list[int] = []
        names: list[str] = []
        for f in doc["fields"]:
            if f["name"] in ENVELOPE_FIELDS:
                code += c.read(f["type"], namespace, SOURCE_FIELDS if f["name"] == "source" else None)
                names.append(f["name"])
            else:
                code += c.skip(f["type"], namespace)
        code += [RECORD, c.const(tuple(names))]
    except (KeyError, TypeError, ValueError) as exc:
        raise Unsupported(f"the schema document is not one this reader understands: {exc!r}") from None
    return Program(tuple(code), tuple(c.consts)).read
