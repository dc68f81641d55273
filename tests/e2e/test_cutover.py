"""Cutover and rollback under a live write load through the router."""

import time

from reshard.control.states import State
from reshard.cutover import reverse as reverse_streams
from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover, rollback
from reshard.exit_codes import ExitCode
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.connect_client import ConnectClient
from reshard.router import Router
from tests.e2e.cutover_helpers import (
    RouterLoad,
    acceptors,
    assert_acked_on_owners,
    assert_no_stale_writes,
    moving_keys,
    setup,
)
from tests.e2e.helpers import ApplierThread, applied_count, assert_verified


def test_cutover_under_load_loses_no_acknowledged_write_and_never_writes_a_stale_owner(env):
    co, name = setup(env)
    co.start(name)
    with ApplierThread(co, name) as applier:
        load = RouterLoad(env.config, threads=4, rate=400, seed=1).start()
        try:
            time.sleep(3.0)
            assert_verified(co.verify(name))
            before = load.stats.writes
            result = cutover(env.config, co.store, name, SwitchOptions(max_write_pause=2.0))
            assert result.outcome == Outcome.DONE, result.message
            time.sleep(3.0)  # the routers now write the moved keys on the targets
            after = load.stats.writes
        finally:
            stats = load.stop()
        co.wait(name, timeout=60)  # forward for staying keys, reverse for moved ones
        assert_verified(co.verify(name))
    assert result.pause_ms < 2000 and result.drain_ms < result.pause_ms
    assert before > 500 and after - before > 500, (before, after)
    assert stats.rejected == 0, "routers should ride through the switch"
    assert co.store.migration(name).state == State.BAKING
    assert co.store.active_epoch() == result.epoch
    assert assert_acked_on_owners(env, load.acked, co) > 1000
    assert assert_no_stale_writes(env, co) > 1000
    for k in moving_keys(10):
        assert len(acceptors(env, k)) == 1
    # the moved keys' writes came back to the sources through the reverse streams, and
    # their echoes (the reverse applier's writes, captured by the forward streams) were
    # dropped in Connect by reshard's echo filter: none reached the applier
    applied = applier.result["stats"]
    assert applied.reverse_records > 100, applied
    assert applied.echoes == 0, applied
    print(f"write pause {result.pause_ms:.0f} ms, drain {result.drain_ms:.0f} ms, "
          f"longest client write {stats.max_stall_ms:.0f} ms")


def test_rollback_brings_target_writes_back_and_a_second_cutover_succeeds(env):
    co, name = setup(env)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        first = cutover(env.config, co.store, name, SwitchOptions())
        assert first.outcome == Outcome.DONE, first.message
        load = RouterLoad(env.config, threads=2, rate=200, seed=2).start()
        try:
            time.sleep(2.0)  # writes land on the targets
            back = rollback(env.config, co.store, name, SwitchOptions())
            assert back.outcome == Outcome.DONE, back.message
            time.sleep(2.0)  # and on the sources again
        finally:
            stats = load.stop()
        co.wait(name, timeout=60)
        assert co.store.migration(name).state == State.ROLLED_BACK
        # every transition on the way was recorded with who made it and why
        moves = [e["detail"] for e in co.store.recent_events(name, 100) if e["event"] == "migration.state"]
        assert [(m["old"], m["new"]) for m in moves][-4:] == [
            (State.STREAMING, State.SWITCHING), (State.SWITCHING, State.BAKING),
            (State.BAKING, State.SWITCHING), (State.SWITCHING, State.ROLLED_BACK)], moves
        assert all(m["by"] and m["why"] for m in moves), moves
        assert co.store.active_epoch() == back.epoch > first.epoch
        assert co.store.get_map(back.epoch).digest() == co.store.get_map(co.store.migration(name).from_epoch).digest()
        assert stats.rejected == 0
        assert assert_acked_on_owners(env, load.acked, co) > 100  # target-era writes are on the sources
        assert not co.store.reverse_streams(name), "rollback drops the reverse streams"
        assert_verified(co.verify(name))
        second = cutover(env.config, co.store, name, SwitchOptions())
        assert second.outcome == Outcome.DONE, second.message
        assert second.epoch > back.epoch
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
    assert assert_no_stale_writes(env, co) > 100


def test_budget_exceeded_aborts_quiets_the_reverse_streams_and_the_next_attempt_skips_their_echoes(env):
    co, name = setup(env)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
    # a worker that reports in but applies nothing (stuck): the gate passes, the drain cannot finish
    co.store.heartbeat(name, "stuck-applier", "applier", {})
    load = RouterLoad(env.config, threads=2, rate=200, seed=3).start()
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        result = cutover(env.config, co.store, name, SwitchOptions(max_write_pause=1.5))
        took = time.monotonic() - t0
        time.sleep(1.5)
    finally:
        stats = load.stop()
    assert result.outcome == Outcome.ABORTED and result.exit_code == ExitCode.CUTOVER_ABORTED, result.message
    assert result.unfenced_after_ms < 1500, result.unfenced_after_ms
    assert co.store.active_epoch() == co.store.migration(name).from_epoch  # routing unchanged
    assert stats.rejected == 0 and stats.max_stall_ms < 1500 + 300, stats.max_stall_ms
    for k in moving_keys(5):
        assert acceptors(env, k) == ["source1"]
    assert took < 10
    # the attempt backed out with its reverse streams prepared: they are stopped, so the
    # forward applier's writes on the targets (all echoes) do not travel through Kafka again
    client = ConnectClient(env.config.connect)
    rev = reverse_streams.streams(co.store, name)
    assert rev and all(client.stopped(s.connector) for s in rev)
    rev_topics = [s.topic(t) for s in rev for t in ("public.accounts",)]
    with KafkaAdmin(env.config.kafka) as admin:
        quiet_ends = admin.end_offsets(rev_topics)
        with ApplierThread(co, name):
            co.wait(name, timeout=60)  # the load's forward changes, applied to the targets
            assert applied_count(env, name) > 100
            assert admin.end_offsets(rev_topics) == quiet_ends, "echoes were produced"
            # the next attempt moves the reverse slots past those echoes, then resumes them
            again = cutover(env.config, co.store, name, SwitchOptions(max_write_pause=3))
            assert again.outcome == Outcome.DONE, again.message
            assert all(not client.stopped(s.connector) for s in rev)
            assert admin.end_offsets(rev_topics) == quiet_ends, "the resumed streams replayed echoes"
            # and they carry the targets' own writes back to the source
            k = moving_keys(1)[0]
            with Router.from_config(env.config) as router:
                router.write("public.accounts", [k], lambda c: c.execute(
                    "UPDATE accounts SET owner = 'after-resume' WHERE id = %s", (k,)))
            co.wait(name, timeout=60)
        assert sum(admin.end_offsets(rev_topics).values()) > sum(quiet_ends.values())
    with env.conn("source1") as conn:
        assert conn.execute("SELECT owner FROM accounts WHERE id = %s", (k,)).fetchone()[0] == "after-resume"
