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


def test_a_slot_dropped_underneath_fails_wait_and_the_lag_gate(env):
    import pytest

    from cutover.gates import lag_gate, stream_wal_lag
    from reshard.connect_client import ConnectClient
    from reshard.errors import MigrationError
    from reshard.streams import forward

    co, name = setup(env, rows=300, audit=False)
    co.start(name)
    stream = forward(name, "source1")
    client = ConnectClient(env.config.connect.url)
    client.delete(stream.connector)  # releases the slot, which someone then drops
    with env.conn("source1") as conn:
        wait_for(lambda: not conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                          (stream.slot,)).fetchone()[0], 30, "the slot to be released")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (stream.slot,))
    with pytest.raises(MigrationError, match=f"replication slot {stream.slot} on source1 is gone"):
        co.wait(name, timeout=20)
    gate = lag_gate(0, 1000, stream_wal_lag(env.config, [stream]), 1 << 20)
    assert not gate.ok and "missing" in gate.detail
