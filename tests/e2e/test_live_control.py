"""Steering a running migration: `reshard throttle`, `pause` and `resume` reach the running copy
and appliers within 2 s, through the control database, and lose nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

from reshard.snapshotter.throttle import ThrottleSettings
from tests.e2e.helpers import (
    ApplierThread,
    all_rows,
    assert_targets_equal_source,
    assert_verified,
    prepare,
    reshard_cmd,
    wait_for,
    write_config_file,
)


def copied(co, name: str) -> int:
    return sum(int(c["rows_copied"] or 0) for c in co.store.copy_progress(name))


def steer(cfg, *args: str) -> dict:
    out = subprocess.run(reshard_cmd(cfg, *args, "--json"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_running_copy_obeys_a_new_throttle_a_pause_and_a_resume(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=120_000, migration=name)
    cfg = write_config_file(env, tmp_path)
    steer(cfg, "throttle", name, "--max-rows-per-second", "4000")  # set before the copy: it starts capped
    result: dict = {}

    def run() -> None:
        try:
            result["report"] = co.start(name, batch_rows=1000, copy_workers=2,
                                        throttle=ThrottleSettings(adaptive=False))
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        wait_for(lambda: copied(co, name) > 4000, 120, "the copy under way")
        a, ta = copied(co, name), time.monotonic()
        time.sleep(5.0)
        rate = (copied(co, name) - a) / (time.monotonic() - ta)
        assert rate < 4000 * 1.3, f"{rate:.0f} rows/s under a 4,000 rows/s cap"
        paused_at = time.monotonic()
        doc = steer(cfg, "pause", name, "--copy")
        assert doc["parts"] == ["copy"] and doc["control"]["copy"] == "paused"
        time.sleep(2.5)  # obeyed within 2 s; a batch under way when it was told may still commit
        held = copied(co, name)
        time.sleep(4.0)
        assert copied(co, name) == held, "the copy went on while paused"
        status = steer(cfg, "status", name)
        assert status["control"]["paused"] == ["copy"] and status["control"]["throttle"]
        steer(cfg, "throttle", name, "--clear")
        steer(cfg, "resume", name)
        t.join(timeout=300)
        assert not t.is_alive(), "the copy did not finish after resume"
    finally:
        steer(cfg, "resume", name)
        t.join(timeout=300)
    if "error" in result:
        raise result["error"]
    assert result["report"].rows >= 120_000
    assert time.monotonic() - paused_at > 6
    with ApplierThread(co, name):
        co.wait(name, timeout=120)
    assert_targets_equal_source(env)
    assert_verified(co.verify(name))
    events = {e["event"] for e in co.store.recent_events(name, 200)}
    assert {"control.pause", "control.resume", "control.throttle"} <= events


def test_paused_appliers_fetch_nothing_and_catch_up_after_resume(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=2_000, migration=name)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    follow = subprocess.Popen(reshard_cmd(cfg, "events", name, "--follow", "--last", "0", "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with ApplierThread(co, name) as applier:
        co.wait(name, timeout=60)
        steer(cfg, "pause", name, "--apply")
        try:  # the pause reaches a follower of the audit log as it is recorded
            seen: list[str] = []
            while "control.pause" not in seen:
                line = follow.stdout.readline()
                assert line, follow.stderr.read()
                seen += [e["event"] for e in json.loads(line)["events"]]
        finally:
            follow.send_signal(signal.SIGINT)
            assert follow.wait(timeout=10) == 0
        time.sleep(2.5)
        on_targets = sum(len(all_rows(env.dsn(t))) for t in ("target1", "target2"))
        with env.conn("source1") as conn:
            conn.execute("INSERT INTO public.accounts (id, owner, balance) "
                         "SELECT g, 'paused', 1 FROM generate_series(100001, 100500) g")
        time.sleep(5.0)
        assert sum(len(all_rows(env.dsn(t))) for t in ("target1", "target2")) == on_targets
        workers = steer(cfg, "status", name)["workers"]
        assert any(w["stats"].get("paused") for w in workers if w.get("live")), workers
        steer(cfg, "resume", name, "--apply")
        co.wait(name, timeout=60)
    assert "error" not in applier.result
    assert_targets_equal_source(env)
    listed = steer(cfg, "events", name, "--last", "50")["events"]
    assert [e["event"] for e in listed if e["event"].startswith("control.")] == ["control.pause", "control.resume"]


def exported(co, name: str, metric: str) -> dict[tuple[str, ...], float]:
    """One refresh of the exporter's collector against the real stack: the metric's samples
    for this migration, by their other labels' values."""
    from reshard.observe.exporter import MigrationCollector

    collector = MigrationCollector(co, [name])
    collector.refresh()
    return {tuple(v for k, v in sorted(s.labels.items()) if k != "migration"): s.value
            for m in collector.collect() if m.name == metric for s in m.samples}


def test_the_copy_pauses_while_its_slot_keeps_more_wal_than_the_budget(env, tmp_path):
    from reshard.kafka.connect_client import ConnectClient
    from reshard.kafka.streams import forward

    name = env.migration()
    co = prepare(env, rows=100_000, migration=name)
    result: dict = {}

    def run() -> None:
        try:
            result["report"] = co.start(name, batch_rows=500, throttle=ThrottleSettings(
                adaptive=False, max_rows_per_s=4000, max_slot_wal_bytes=8 << 20))
        except BaseException as exc:
            result["error"] = exc

    with env.conn("source1") as conn:  # PostgreSQL's own limit, which the exporter reports beside the budget
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'")
        conn.execute("SELECT pg_reload_conf()")
    t = threading.Thread(target=run, daemon=True)
    t.start()
    client = ConnectClient(env.config.connect)
    connector = forward(name, "source1").connector
    try:
        wait_for(lambda: copied(co, name) > 2000, 120, "the copy under way")
        client.pause(connector)  # Debezium confirms nothing: the slot keeps every byte of WAL from now on
        with env.conn("source1") as conn:
            for _ in range(3):  # ~10 MB of WAL a pass, far over the 8 MiB budget
                conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id <= 40000")

        def stalled() -> bool:
            a = copied(co, name)
            time.sleep(3.0)
            return copied(co, name) == a
        wait_for(stalled, 60, "the copy to pause on the WAL budget", interval=0)
        held = copied(co, name)
        assert held < 100_000 and t.is_alive()
        time.sleep(4.0)
        assert copied(co, name) == held, "the copy went on over the WAL budget"
        # said as an event and as the exporter's metric (the alert's input), with the slot's limit
        paused = co.store.last_event(name, "copy.wal_paused")
        assert paused and paused["detail"]["budget_bytes"] == 8 << 20, paused
        assert paused["detail"]["unconfirmed_bytes"] > 8 << 20 and paused["detail"]["cluster"] == "source1"
        assert exported(co, name, "reshard_copy_wal_paused") == {("source1",): 1.0}
        stream = forward(name, "source1")
        assert exported(co, name, "reshard_slot_wal_keep_limit_bytes") == {
            ("source1", stream.slot, f"{stream.direction}:source1"): float(1 << 30)}
        client.resume(connector)  # the stream confirms what it held back: the copy resumes
        t.join(timeout=120)
        assert not t.is_alive(), "the copy did not resume once the slot kept less WAL"
    finally:
        client.resume(connector)
        t.join(timeout=120)
        with env.conn("source1") as conn:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
    if "error" in result:
        raise result["error"]
    budget = result["report"].throttle["source1"]
    assert budget["slot_wal_budget_bytes"] == 8 << 20 and budget["waited_s"] >= 4, budget
    assert co.store.last_event(name, "copy.wal_resumed")["detail"]["cluster"] == "source1"
    with ApplierThread(co, name):
        co.wait(name, timeout=120)
    assert_targets_equal_source(env)


def test_completes_deletes_follow_the_throttle_and_a_pause(env, tmp_path):
    """`complete`'s deletes are paced by the copy's throttle: `reshard throttle` caps them while
    they run, `reshard pause --complete` holds them, `resume` lets them finish."""
    from reshard.control.states import State
    from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover
    from tests.e2e.cutover_helpers import setup
    from tests.e2e.helpers import spawn

    co, name = setup(env, rows=40_000, audit=False)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        assert cutover(env.config, co.store, name, SwitchOptions()).outcome == Outcome.DONE
    assert co.store.migration(name).state == State.BAKING

    def on_source() -> int:
        with env.conn("source1") as conn:
            return conn.execute("SELECT count(*) FROM accounts").fetchone()[0]

    before = on_source()
    steer(cfg, "throttle", name, "--max-rows-per-second", "2000")
    log = tmp_path / "complete.log"
    proc = spawn(cfg, log, "complete", name, "--yes", "--batch-rows", "500", "--batch-pause", "10ms")
    try:
        wait_for(lambda: on_source() < before - 1000 or proc.poll() is not None, 60, "the deletes to start")
        assert proc.poll() is None, log.read_text()
        a, t0 = on_source(), time.monotonic()
        time.sleep(4.0)
        rate = (a - on_source()) / (time.monotonic() - t0)
        assert 500 < rate < 3000, f"{rate:.0f} rows/s under a 2,000 rows/s cap"  # the adaptive floor may bind
        steer(cfg, "pause", name, "--complete")
        time.sleep(2.5)  # obeyed within 2 s
        held = on_source()
        time.sleep(3.0)
        assert on_source() == held and proc.poll() is None, "the deletes went on while paused"
        steer(cfg, "throttle", name, "--clear")
        steer(cfg, "resume", name, "--complete")
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "source1: deletes throttled to" in text, text[-2000:]  # the limit and its reason, said
    assert co.store.migration(name).state == State.COMPLETE
    _epoch, final = co.store.active()
    with env.conn("source1") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM accounts").fetchall()]
    assert ids and all(final.owner("public.accounts", [k]) == "source1" for k in ids)  # the moved rows left
