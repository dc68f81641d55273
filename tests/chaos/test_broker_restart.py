"""Faults one at a time under a live write load; after each, every acknowledged write is
on its owner (the targets equal the source, row for row)."""

from __future__ import annotations

import os
import signal
import time

from reshard.connect_client import ConnectClient
from reshard.streams import forward
from reshard.workload import Workload
from tests.e2e.helpers import assert_targets_equal_source, prepare, spawn, wait_for, write_config_file


def _part(stack, name: str):
    return next(p for p in stack.status() if p.name == name)


def test_broker_sigkill_and_restart_under_load(env, stack, tmp_path):
    name = env.migration()
    co = prepare(env, rows=5_000, migration=name)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    log = tmp_path / "apply.log"
    applier = spawn(cfg, log, "apply", name)
    load = Workload(env.dsn("source1"), rate=200, max_seconds=150, seed=8)
    load.start()
    try:
        co.wait(name, timeout=90)
        before = _part(stack, "kafka")
        os.kill(before.pid, signal.SIGKILL)  # the recorded pid, never a name
        wait_for(lambda: not _part(stack, "kafka").running, 20, "the broker to die")
        time.sleep(3.0)  # writes go on at the source; Connect and the applier lose Kafka
        stack.up(sources=1, targets=2)
        after = _part(stack, "kafka")
        assert after.port == before.port and after.healthy, (before, after)
        ConnectClient(env.config.connect.url).wait_running(forward(name, "source1").connector, timeout=120)
        time.sleep(3.0)
        stats = load.stop()
        co.wait(name, timeout=240)
        assert applier.poll() is None, log.read_text()  # it rode the outage out
    finally:
        load.stop()
        if applier.poll() is None:
            applier.send_signal(signal.SIGTERM)
            applier.wait(timeout=60)
    assert stats.errors == 0 and stats.operations > 500
    assert applier.returncode == 0, log.read_text()
    assert_targets_equal_source(env)
