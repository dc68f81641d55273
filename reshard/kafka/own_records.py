"""reshard's own Avro records (``schemas/*.avsc``): registered, then written in the
Confluent wire format (magic byte 0, the 4-byte schema id, the Avro body), so that any
Confluent-compatible consumer reads them with the registered schema.

A writer registers its schema once, under the topic's value subject (``<topic>-value``);
registering the same schema again returns the same id, so every process may do it.
"""

from __future__ import annotations

import io
import json
import struct
from functools import cache
from importlib import resources
from typing import Any

import fastavro

from reshard.errors import ReshardError, Unavailable
from reshard.http import Endpoint, HttpClient

SCHEMAS = resources.files("reshard.schemas")  # schemas/ in the repository
WIRE_HEADER = struct.Struct(">bI")


@cache
def schema(name: str) -> dict:
    """``schemas/<name>.avsc`` as a document."""
    return json.loads((SCHEMAS / f"{name}.avsc").read_text())


def register(registry_url: str, subject: str, doc: dict, timeout: float = 10.0) -> int:
    """Register ``doc`` under ``subject`` (idempotent) and return its schema id."""
    http = HttpClient(Endpoint(registry_url, "the schema registry", timeout=timeout),
                      headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    try:
        body = {"schema": json.dumps(doc), "schemaType": "AVRO"}
        return int(http.call("POST", f"/subjects/{subject}/versions", json=body)["id"])
    except (ReshardError, KeyError, TypeError) as exc:
        raise Unavailable(f"cannot register subject {subject} in the schema registry at {registry_url}: {exc}") from None
    finally:
        http.close()


class RecordWriter:
    """Encodes records of one schema for one topic; registers the schema on first use."""

    def __init__(self, registry_url: str, topic: str, name: str):
        self.registry_url = registry_url
        self.subject = f"{topic}-value"
        self.doc = schema(name)
        self.parsed = fastavro.parse_schema(self.doc)
        self._id: int | None = None

    @property
    def schema_id(self) -> int:
        if self._id is None:
            self._id = register(self.registry_url, self.subject, self.doc)
        return self._id

    def encode(self, record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(WIRE_HEADER.pack(0, self.schema_id))
        fastavro.schemaless_writer(out, self.parsed, record)
        return out.getvalue()
