"""Workers that die are replaced in every state that has streams (issue: the applier
could not be restarted after a cutover, so rollback then failed its applier gate)."""

from __future__ import annotations

import os
import signal
import time

from cutover.orchestrator import DONE, SwitchOptions, cutover, rollback
from tests.e2e.cutover_helpers import RouterLoad, assert_acked_on_owners, setup
from tests.e2e.helpers import assert_verified, spawn, wait_for, write_config_file


def _alive_workers(co, name) -> int:
    return sum(1 for w in co.store.workers(name) if float(w["idle_s"]) < 5)


def test_applier_killed_after_cutover_is_replaced_and_rollback_succeeds(env, tmp_path):
    co, name = setup(env, rows=3_000, audit=False)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    first = spawn(cfg, tmp_path / "apply1.log", "apply", name)
    second = None
    load = RouterLoad(env.config, threads=2, rate=100, keyspace=3_000, seed=9).start()
    try:
        co.wait(name, timeout=90)
        assert_verified(co.verify(name))
        assert cutover(env.config, co.store, name, SwitchOptions(max_write_pause=3)).outcome == DONE
        time.sleep(1.0)  # target-era writes flow back through the reverse stream
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        second = spawn(cfg, tmp_path / "apply2.log", "apply", name)
        wait_for(lambda: second.poll() is not None or _alive_workers(co, name) >= 1, 30, "the new worker")
        assert second.poll() is None, (tmp_path / "apply2.log").read_text()
        # the dead member keeps its partitions until its session times out (10 s); then the new
        # worker takes them over and catches up, in both directions
        co.wait(name, timeout=90)
        back = rollback(env.config, co.store, name, SwitchOptions(max_write_pause=3))
        assert back.outcome == DONE, back.message
    finally:
        stats = load.stop()
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
    assert stats.writes > 100
    assert assert_acked_on_owners(env, load.acked, co) > 50
