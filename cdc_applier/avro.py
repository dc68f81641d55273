"""Avro records in the Confluent wire format, and their writer schemas, by id, from the registry.

Debezium writes through the Apicurio converter: a magic byte 0, the schema's 4-byte id
(big-endian), then the Avro binary body. Any Confluent-compatible consumer reads the
same topics. The writer schema of an id never changes, so each is fetched once from the
registry's Confluent-compatible API (``GET /schemas/ids/{id}/schema``: the bare schema, which
every registry version answers) and kept: no registry
call per message, and a new table version (a column added mid-stream) is simply a new
id, read the first time it appears, without a restart.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

import fastavro

from reshard.cdc_applier.envelope_reader import Program, Unsupported, compile_envelope
from reshard.errors import Unavailable
from reshard.http import Endpoint, HttpClient, HttpError
from reshard.retry import retry

log = logging.getLogger("reshard.cdc_applier.avro")
MAGIC = 0
HEADER = struct.Struct(">bI")  # magic byte, schema id
FETCH_ATTEMPTS = 5


class UnknownSchema(LookupError):
    """The registry does not know the record's schema id (a 404), so the record cannot be read."""


class WriterSchemas:
    """Parsed writer schemas by id, fetched once each from a Confluent-compatible registry."""

    def __init__(self, url: str, timeout: float = 10.0, compiled: bool = True):
        self.url = url.rstrip("/")
        self.compiled = compiled and Program is not None  # envelopes read by compiled programs, not fastavro
        self._readers: dict[int, Callable[[bytes, int], dict] | None] = {}
        self.http = HttpClient(Endpoint(self.url, "the schema registry", timeout=timeout))
        self._parsed: dict[int, Any] = {}
        self._raw: dict[int, dict] = {}
        self._lock = threading.Lock()
        self.fetches = 0
        self.derived: dict[tuple[str, int], Any] = {}  # what decoders compute once per schema id

    def raw(self, schema_id: int) -> dict:
        """The schema as the registry holds it (a JSON document)."""
        self.parsed(schema_id)
        return self._raw[schema_id]

    def envelope_reader(self, schema_id: int) -> Callable[[bytes, int], dict] | None:
        """The compiled reader of a Debezium envelope of this schema (see envelope_reader.py), or
        None when fastavro reads it (not an envelope, a shape the reader is not built for)."""
        try:
            return self._readers[schema_id]
        except KeyError:
            pass
        reader = None
        if self.compiled:
            try:
                reader = compile_envelope(self.raw(schema_id))
            except Unsupported as exc:
                log.info("schema id %s: change events read by fastavro, not the compiled reader: %s", schema_id, exc)
        self._readers[schema_id] = reader
        return reader

    def parsed(self, schema_id: int) -> Any:
        found = self._parsed.get(schema_id)
        if found is not None:
            return found
        with self._lock:
            if schema_id not in self._parsed:
                doc = self._fetch(schema_id)
                self._raw[schema_id] = doc
                self._parsed[schema_id] = fastavro.parse_schema(doc)
            return self._parsed[schema_id]

    def _fetch(self, schema_id: int) -> dict:
        """Transient failures (the registry restarting) are retried with backoff; a registry
        that stays away is Unavailable (the applier exits 4, nothing lost); an id it does
        not know is UnknownSchema (the record goes to the dead-letter topic)."""
        path = f"/schemas/ids/{schema_id}/schema"

        def fetch() -> dict:
            try:
                doc = self.http.call("GET", path)
            except HttpError as exc:
                if exc.status == 404:
                    raise UnknownSchema(f"schema id {schema_id} is not in the registry at {self.url}") from None
                raise Unavailable(str(exc)) from None
            self.fetches += 1
            return doc
        try:
            return retry(fetch, on=(Unavailable,), attempts=FETCH_ATTEMPTS, delay=0.5, backoff=2)
        except Unavailable as exc:
            raise Unavailable(f"the schema registry at {self.url} does not answer for schema id {schema_id}: "
                              f"{exc}") from None


def schema_id(data: bytes) -> int | None:
    """The schema id of a Confluent wire-format record, or None when it is not one."""
    if len(data) < HEADER.size or data[0] != MAGIC:
        return None
    return HEADER.unpack_from(data)[1]


def read(data: bytes, schema: Any) -> Any:
    """The Avro body of a wire-format record, decoded with its writer schema."""
    return fastavro.schemaless_reader(io.BytesIO(memoryview(data)[HEADER.size:]), schema, None)
