"""Faults one at a time under a live write load: a stack part is killed by its recorded
pid and brought back with `stack up`. After each, the same applier process has caught
up and every acknowledged write is on its owner (the targets equal the source, row
for row)."""

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


def _fault_under_load(env, stack, tmp_path, part: str, sig: int) -> None:
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
        before = _part(stack, part)
        os.kill(before.pid, sig)  # the recorded pid, never a name
        wait_for(lambda: not _part(stack, part).running, 60, f"{part} to stop")
        time.sleep(3.0)  # writes go on at the source while the part is down
        stack.up(sources=1, targets=2)
        after = _part(stack, part)
        assert after.port == before.port and after.healthy, (before, after)
        ConnectClient(env.config.connect.url).wait_running(forward(name, "source1").connector, timeout=120)
        time.sleep(3.0)
        stats = load.stop()
        co.wait(name, timeout=240)
        assert applier.poll() is None, log.read_text()  # it rode the fault out
    finally:
        load.stop()
        if applier.poll() is None:
            applier.send_signal(signal.SIGTERM)
            applier.wait(timeout=60)
    assert stats.errors == 0 and stats.operations > 500
    assert applier.returncode == 0, log.read_text()
    assert_targets_equal_source(env)


def test_broker_sigkill_and_restart_under_load(env, stack, tmp_path):
    _fault_under_load(env, stack, tmp_path, "kafka", signal.SIGKILL)


def test_connect_sigkill_and_restart_under_load(env, stack, tmp_path):
    _fault_under_load(env, stack, tmp_path, "connect", signal.SIGKILL)


def test_target_postgres_immediate_stop_and_restart_under_load(env, stack, tmp_path):
    # SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, crash recovery on start
    _fault_under_load(env, stack, tmp_path, "target1", signal.SIGQUIT)
