"""Faults one at a time while a migration streams under the two-table transfer load: a
stack part is killed by its recorded pid and brought back with `stack up` on its port,
or the applier is SIGKILLed and a new one started. After each, the migration catches
up, verifies equal, and the audit finds every acknowledged write on its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import forward
from tests.chaos.harness import Fault, LedgerLoad, audit, setup
from tests.e2e.helpers import assert_verified, at_failpoint, spawn, wait_for, write_config_file


def _part(stack, name: str):
    return next(p for p in stack.status() if p.name == name)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


# the broker and Connect restarts take 1.5-2 minutes each on this machine: `make chaos`
# runs them, `make test` (CI's 30-minute budget) does not
LONG = pytest.mark.long
FAULTS = [
    pytest.param("kafka", signal.SIGKILL, "broker SIGKILL", marks=LONG),
    pytest.param("connect", signal.SIGKILL, "Connect SIGKILL", marks=LONG),
    # SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, crash recovery on start
    ("source1", signal.SIGQUIT, "source PostgreSQL immediate stop"),
    ("target1", signal.SIGQUIT, "target PostgreSQL immediate stop"),
]


@pytest.mark.parametrize("part,sig,fault", FAULTS, ids=["kafka", "connect", "source1", "target1"])
def test_a_stack_part_killed_and_restarted_under_load(env, stack, tmp_path, part, sig, fault):
    co, name = setup(env)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    log = tmp_path / "apply.log"
    applier = spawn(cfg, log, "apply", name)
    load = LedgerLoad(env.config, rate=150, seed=len(part)).start()
    f = Fault(fault, "streaming")
    try:
        co.wait(name, timeout=90)
        before = _part(stack, part)
        os.kill(before.pid, sig)  # the recorded pid, never a name
        wait_for(lambda: not _part(stack, part).running, 60, f"{part} to stop")
        time.sleep(3.0)  # the application goes on writing (or failing to) while the part is down
        stack.up(sources=1, targets=2)
        after = _part(stack, part)
        assert after.port == before.port and after.healthy, (before, after)
        ConnectClient(env.config.connect).wait_running(forward(name, "source1").connector, timeout=120)
        time.sleep(3.0)
        stats = load.stop()
        co.wait(name, timeout=240)
        assert applier.poll() is None, log.read_text()  # the same applier rode the fault out
        assert_verified(co.verify(name))
    finally:
        load.stop()
        _stop(applier)
    assert applier.returncode == 0, log.read_text()
    assert stats.writes > 300
    f.survived(stats, audit(env, co, load))


def test_the_applier_sigkilled_and_replaced_under_load(env, tmp_path):
    co, name = setup(env)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    # stalled inside a batch's transaction on the targets (applied, not committed), and killed there
    point = "apply_batch:staged#20"
    first = spawn(cfg, tmp_path / "apply1.log", "apply", name, failpoint=point)
    second = None
    load = LedgerLoad(env.config, rate=150, seed=3).start()
    f = Fault("applier SIGKILL mid-batch, new one started", "streaming")
    try:
        at_failpoint(first, tmp_path / "apply1.log", point, timeout=90)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        time.sleep(3.0)
        second = spawn(cfg, tmp_path / "apply2.log", "apply", name)
        time.sleep(3.0)
        stats = load.stop()
        # the dead member keeps its partitions until its session times out; then the new one
        # takes them over from the last committed offsets and replays what was applied after
        co.wait(name, timeout=120)
        assert second.poll() is None, (tmp_path / "apply2.log").read_text()
        assert_verified(co.verify(name))
    finally:
        load.stop()
        _stop(second)
    assert stats.writes > 300
    f.survived(stats, audit(env, co, load))
