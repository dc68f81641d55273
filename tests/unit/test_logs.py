"""Log lines: JSON objects with the context fields, text with the same facts, and never a
password, whatever the message or its fields carry."""

import io
import json
import logging

import pytest

from reshard.observe import logs


@pytest.fixture
def capture():
    buf = io.StringIO()
    saved = dict(logs._context)

    def run(fmt: str):
        logs.configure("info", fmt, buf)
        return buf

    yield run
    logs._context.clear()
    logs._context.update(saved)
    logging.getLogger().handlers.clear()


@pytest.mark.parametrize("text", [
    "connection to host=db1 port=5432 user=app password=s3cr3t dbname=x failed",
    "connect_dsn: host=db1 password='s3 cr3t' dbname=x",
    "postgresql://app:s3cr3t@db1:5432/x unreachable",
    '{"sasl.password": "s3cr3t", "user": "app"}',
    "token='s3cr3t'",
])
def test_secrets_are_redacted(text):
    out = logs.redact(text)
    assert "s3cr3t" not in out and "s3 cr3t" not in out
    assert "***" in out


def test_redaction_leaves_ordinary_text_alone():
    text = "applied 1,200 events from 1,300 records (password policy: none)"
    assert logs.redact(text) == text


def test_json_lines_carry_context_and_fields_and_no_secret(capture):
    buf = capture("json")
    logs.bind(migration="m1", worker="applier@h:1")
    log = logging.getLogger("reshard.cdc_applier.worker")
    log.info("applied %d events", 5, extra={"stream": "fwd:source1", "fields": {"events_per_s": 12.5}})
    log.warning("cannot reach host=db password=s3cr3t", extra={"fields": {"dsn": "host=db password=s3cr3t"}})
    logging.getLogger("reshard.control").debug("not shown at info")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["message"] == "applied 5 events" and first["level"] == "info"
    assert first["migration"] == "m1" and first["worker"] == "applier@h:1" and first["stream"] == "fwd:source1"
    assert first["events_per_s"] == 12.5 and first["ts"].endswith("Z") and first["logger"] == "reshard.cdc_applier.worker"
    assert "s3cr3t" not in buf.getvalue()


def test_text_lines_say_the_same(capture):
    buf = capture("text")
    logs.bind(migration="m1")
    logging.getLogger("reshard.observe.exporter").warning("could not read %s", "postgresql://u:s3cr3t@h/db")
    line = buf.getvalue().strip()
    assert "WARNING" in line and "reshard.observe.exporter" in line and "migration=m1" in line
    assert "s3cr3t" not in line and "could not read postgresql://u:***@h/db" in line
