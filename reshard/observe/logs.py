"""Logs on stderr through the standard ``logging`` module: text for people, JSON for jobs.

``--log-format json`` writes one JSON object per line (``ts`` in ISO 8601 UTC, ``level``,
``logger``, ``message``, then the context: ``migration``, ``worker``, ``stream``, ``step``,
``cluster`` where they apply), which log shippers take as is; progress then goes through
the log too, so stderr holds nothing else. Secrets never reach a line: passwords in DSNs
(``password=…``), in URLs (``user:secret@``) and in ``password``/``secret``/``token``
fields are replaced by ``***`` in the message and in every field, whatever logged them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import IO, Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
CONTEXT_FIELDS = ("migration", "worker", "stream", "step", "cluster", "attempt", "task")

_SECRET_PATTERNS = [
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I), r"\1***"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1***@"),
    (re.compile(r"""(["']?(?:password|passwd|secret|token|sasl\.password)["']?\s*[:=]\s*)(["'])(?:(?!\2).)*\2""", re.I),
     r"\1\2***\2"),
]
_context: dict[str, Any] = {}


def redact(text: str) -> str:
    """``text`` with every password, secret and token value replaced by ``***``."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def bind(**fields: Any) -> None:
    """Context every later line of this process carries (one command, one migration)."""
    _context.update({k: v for k, v in fields.items() if v is not None})


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in _context.items():
            if not hasattr(record, k):
                setattr(record, k, v)
        return True


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": _iso(record.created), "level": record.levelname.lower(),
                               "logger": record.name, "message": redact(record.getMessage())}
        for k in CONTEXT_FIELDS:
            if getattr(record, k, None) is not None:
                v = getattr(record, k)
                doc[k] = redact(v) if isinstance(v, str) else v
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update({k: redact(v) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_info:
            doc["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None) is not None)
        line = f"{_iso(record.created)} {record.levelname:<7} {record.name}{' ' + ctx if ctx else ''}: " \
               f"{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def configure(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Route reshard's loggers (and librdkafka's, psycopg's warnings) to ``stream``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: warnings and errors only
    logging.getLogger("reshard").setLevel(level.upper())  # the stages log as reshard.<stage>.<module>
