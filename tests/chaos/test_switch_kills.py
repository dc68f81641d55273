"""SIGKILL the coordinator at every step of a cutover and of a rollback, and the applier
after a cutover, all under the two-table transfer load.

After each kill: no key is accepted by two clusters, even with the process dead mid-step.
The same command again settles it (finishing an attempt past its point of no return,
or backing one out and switching afresh) and exits 0. Once the load stops, every
acknowledged write is on its owner and every accepted write was owned where it landed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from reshard.cutover.orchestrator import FAILPOINT_ENV
from reshard.exit_codes import ExitCode
from tests.chaos.harness import Fault, LedgerLoad, acceptors, audit, moving_keys, setup, switch
from tests.e2e.helpers import ApplierThread, assert_verified, reshard_cmd, spawn, wait_for, write_config_file

STEPS = ("prepare", "register_map", "fence", "drain_position", "drain", "sequences", "flip_from", "flip_to",
         "activate", "after_flip")
POINTS = [f"{s}:before" for s in STEPS] + ["activate:after"]


def _args(kind: str, name: str) -> list[str]:
    return [kind, name, "--max-write-pause", "5", *(["--skip-verify-gate"] if kind == "cutover" else [])]


def _kill_at(cfg, tmp_path, kind: str, name: str, point: str, attempts: int = 3) -> None:
    """Run the switch until it stops at ``point``, then SIGKILL it. An attempt that backs
    out on its budget before reaching a late point (exit 12: sources writable again,
    routing unchanged, as designed when a loaded machine stretches the pause) is run
    again; any other exit fails the test."""
    for attempt in range(attempts):
        log = tmp_path / f"{kind}-{point.replace(':', '_')}-{attempt}.log"
        proc = subprocess.Popen(reshard_cmd(cfg, *_args(kind, name)), stdout=subprocess.DEVNULL,
                                stderr=open(log, "wb"), env={**os.environ, FAILPOINT_ENV: point})
        wait_for(lambda proc=proc, log=log: b"failpoint" in log.read_bytes() or proc.poll() is not None, 90,
                 f"{kind} to reach {point}")
        if proc.poll() == ExitCode.CUTOVER_ABORTED and attempt + 1 < attempts:
            continue
        assert proc.poll() is None, log.read_text()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return


@pytest.mark.long
def test_the_coordinator_sigkilled_at_every_cutover_and_rollback_step(env, tmp_path):
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    probe = moving_keys(6)
    outcomes = []
    f = Fault(f"coordinator SIGKILL at each of {len(POINTS)} steps", "cutover and rollback")
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        load = LedgerLoad(env.config, threads=2, rate=100, seed=5).start()
        try:
            for kind in ("cutover", "rollback"):
                for point in POINTS:
                    if kind == "rollback":
                        switch("cutover", env, co, name)
                    _kill_at(cfg, tmp_path, kind, name, point)
                    for k in probe:
                        assert len(acceptors(env, k)) <= 1, (kind, point, k)
                    rerun = subprocess.run(reshard_cmd(cfg, *_args(kind, name), "--json"), capture_output=True,
                                           text=True, timeout=180)
                    assert rerun.returncode == 0, (kind, point, rerun.stdout, rerun.stderr)
                    doc = json.loads(rerun.stdout)
                    outcomes.append((kind, point, doc["outcome"], doc["recovered"]))
                    for k in probe:
                        assert len(acceptors(env, k)) == 1, (kind, point, k)
                    if kind == "cutover":
                        switch("rollback", env, co, name)
        finally:
            stats = load.stop()
        co.wait(name, timeout=90)
        assert_verified(co.verify(name))
    print("\n" + "\n".join(f"{k:<8} {p:<22} -> {o}; {'; '.join(r) or 'nothing to recover'}"
                           for k, p, o, r in outcomes))
    for kind in ("cutover", "rollback"):
        said = " ".join(" ".join(r) for k, _p, _o, r in outcomes if k == kind)
        assert "finished it" in said, (kind, outcomes)  # a kill after activation
        assert "backed it out" in said, (kind, outcomes)  # a kill before it
    assert stats.writes > 500
    f.survived(stats, audit(env, co, load), note=f"{len(outcomes)} kills, each rerun exit 0")


def test_the_applier_sigkilled_after_cutover_is_replaced_and_rollback_succeeds(env, tmp_path):
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    first = spawn(cfg, tmp_path / "apply1.log", "apply", name)
    second = None
    load = LedgerLoad(env.config, threads=2, rate=100, seed=9).start()
    f = Fault("applier SIGKILL, new one started", "cut over (reverse streams)")
    try:
        co.wait(name, timeout=90)
        assert_verified(co.verify(name))
        switch("cutover", env, co, name)
        time.sleep(1.0)  # target-era writes flow back through the reverse streams
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        second = spawn(cfg, tmp_path / "apply2.log", "apply", name)
        # the dead member keeps its partitions until its session times out (10 s); then the new
        # worker takes them over and catches up, in both directions
        co.wait(name, timeout=120)
        assert second.poll() is None, (tmp_path / "apply2.log").read_text()
        switch("rollback", env, co, name)
        time.sleep(1.0)
    finally:
        stats = load.stop()
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
    assert stats.writes > 300
    f.survived(stats, audit(env, co, load))
