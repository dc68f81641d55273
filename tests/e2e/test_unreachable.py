"""Kafka unreachable: every command says so (exit 4, no traceback) and keeps what
PostgreSQL knows; the applier waits a bounded time, saying so once, then exits 4."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import replace

from reshard.config import write_config
from reshard.exit_codes import ExitCode
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import forward
from reshard.stack.workload import seed
from tests.e2e.helpers import prepare, reshard_cmd, wait_for


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_wait_and_apply_with_kafka_unreachable(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=200, migration=name)
    co.start(name)
    cfg = tmp_path / "reshard.yaml"
    write_config(replace(env.config, kafka=replace(env.config.kafka, bootstrap_servers=f"127.0.0.1:{_dead_port()}")),
                 cfg)

    started = time.monotonic()
    status = subprocess.run(reshard_cmd(cfg, "status", name, "--json"), capture_output=True, text=True, timeout=120)
    assert status.returncode == ExitCode.UNAVAILABLE, status.stderr  # and still says everything else it knows
    doc = json.loads(status.stdout)
    assert doc["state"] == "streaming" and "did not answer" in doc["lag"]["error"], doc["lag"]
    assert set(doc["unreachable"]) == {"kafka"} and doc["streams"][0]["state"] == "RUNNING"
    assert doc["lag"]["streams"][0]["retained_bytes"] is not None  # the slot, read from PostgreSQL
    assert doc["copy"] and doc["events"]
    assert "Traceback" not in status.stderr
    human = subprocess.run(reshard_cmd(cfg, "status", name), capture_output=True, text=True, timeout=120)
    assert human.returncode == ExitCode.UNAVAILABLE and "could not reach kafka" in human.stdout, human.stdout
    assert time.monotonic() - started < 60

    wait = subprocess.run(reshard_cmd(cfg, "wait", name, "--timeout", "20"), capture_output=True, text=True,
                          timeout=120)
    assert wait.returncode == ExitCode.UNAVAILABLE, (wait.returncode, wait.stderr)
    assert "Traceback" not in wait.stderr and "Kafka" in wait.stderr

    started = time.monotonic()
    apply = subprocess.run(reshard_cmd(cfg, "apply", name, "--kafka-outage", "3"), capture_output=True, text=True,
                           timeout=120)
    assert apply.returncode == ExitCode.UNAVAILABLE, (apply.returncode, apply.stderr)
    assert apply.stderr.count("is unreachable; waiting for it") == 1, apply.stderr
    assert "nothing was lost" in apply.stderr and "Traceback" not in apply.stderr
    assert time.monotonic() - started < 60


def test_a_wait_on_a_connector_that_stopped_confirming_says_what_the_stream_looks_like(env, tmp_path):
    """A paused connector keeps its slot but confirms nothing: ``wait`` runs out (exit 6) and
    says the slot's confirmed position, that a consumer holds it, and the task's state."""
    name = env.migration()
    co = prepare(env, rows=200, migration=name)
    co.start(name)
    stream = forward(name, "source1")
    client = ConnectClient(env.config.connect)
    client.pause(stream.connector)
    wait_for(lambda: [t["state"] for t in (client.status(stream.connector) or {}).get("tasks", [])] == ["PAUSED"],
             30, "the connector's task to pause")
    with env.conn("source1") as conn:  # a change after the slot's confirmed position
        seed(conn, 10, first=10_001)
    cfg = tmp_path / "reshard.yaml"
    write_config(env.config, cfg)
    try:
        wait = subprocess.run(reshard_cmd(cfg, "wait", name, "--timeout", "8"), capture_output=True, text=True,
                              timeout=120)
    finally:
        client.resume(stream.connector)
    assert wait.returncode == ExitCode.TIMEOUT, (wait.returncode, wait.stderr)
    said = " ".join(wait.stderr.split())
    assert f"slot {stream.slot} on source1 needed " in said and ", confirmed " in said, said
    assert "held by pid" in said or "no consumer connected" in said, said
    assert f"connector {stream.connector} PAUSED, task PAUSED" in said, said
    assert "Traceback" not in wait.stderr
