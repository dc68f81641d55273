"""The copy's throttle is real and visible: a fixed rows/s cap holds the copy back, status
and progress say so while it runs, and the copy still ends complete and equal."""

import json
import subprocess
import threading
import time

import psycopg
import yaml

from reshard.snapshotter.throttle import LOOK_EVERY_S, CopyThrottle, ThrottleSettings
from reshard.stack.demo import demo_maps
from tests.e2e.helpers import (
    ApplierThread,
    assert_targets_equal_source,
    prepare,
    reshard_cmd,
    wait_for,
    write_config_file,
)


def _throttle_states(env, name) -> list[str]:
    with psycopg.connect(env.config.control_dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT throttle FROM reshard.copy_progress WHERE migration = %s AND NOT done", (name,)) if r[0]]


def test_a_rows_per_second_cap_is_shown_in_status_and_holds_the_copy_back(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=24_000, migration=name)
    cfg = write_config_file(env, tmp_path)
    _before, after = demo_maps(["target1", "target2"])
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))
    log = tmp_path / "start.log"
    proc = subprocess.Popen(reshard_cmd(cfg, "start", name, "--to", str(tmp_path / "after.yaml"), "--batch-rows",
                                        "1000", "--copy-workers", "2", "--max-rows-per-second", "3000", "--json"),
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)
    states = wait_for(lambda: _throttle_states(env, name), 60, "status to show the throttle")
    assert any("--max-rows-per-second 3000" in s for s in states), states
    status = subprocess.run(reshard_cmd(cfg, "status", name), capture_output=True, text=True, timeout=60)
    assert "throttled to" in status.stdout or "done" in status.stdout, status.stdout
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log.read_text()
    report = json.loads(out)
    assert report["rows_copied"] == 24_000
    held = report["throttle"]["source1"]
    assert held["waited_s"] > 1.0, held  # 24,000 rows under a 3,000 rows/s cap: the copy was held back
    assert "throttled to" in log.read_text()  # progress said so too
    with ApplierThread(co, name):
        time.sleep(1.0)
        co.wait(name, timeout=60)
    assert_targets_equal_source(env)


class Application(threading.Thread):
    """An application on source1: back-to-back transactions lasting ``self.ms`` (pg_sleep), which
    the test raises to play an application the copy slows down."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn, self.ms, self.halt = dsn, 1.0, threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="ledger") as conn:
            while not self.halt.is_set():
                conn.execute("SELECT pg_sleep(%s)", (self.ms / 1000,))


def _start(env, tmp_path, name: str, *extra: str) -> subprocess.Popen:
    cfg = write_config_file(env, tmp_path)
    _before, after = demo_maps(["target1", "target2"])
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))
    return subprocess.Popen(reshard_cmd(cfg, "start", name, "--to", str(tmp_path / "after.yaml"), "--batch-rows",
                                        "2000", "--json", *extra),
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "start.log", "wb"), text=True)


def test_the_copy_backs_off_while_the_applications_latency_is_over_the_budget(env, tmp_path):
    """The application is sampled in flight on the real server: its transactions grow from 1 ms to
    40 ms once the copy runs, past a 10 ms budget, so the copy backs off to its floor and says why;
    back at 1 ms the copy grows again and ends complete."""
    name = env.migration()
    co = prepare(env, rows=60_000, migration=name)
    app = Application(env.config.cluster("source1").dsn)
    app.start()
    try:
        time.sleep(1.0)
        proc = _start(env, tmp_path, name, "--max-latency-impact", "10ms")
        log = tmp_path / "start.log"
        wait_for(lambda: _throttle_states(env, name) or "starting slow" in log.read_text(), 60, "the copy to start")
        assert "adaptive, starting slow" in log.read_text()  # an application was there before the copy
        app.ms = 40.0
        wait_for(lambda: "the application's transactions p95 +" in log.read_text(), 30, "the throttle to back off")
        assert "over the budget 10 ms" in log.read_text()
        app.ms = 1.0
        out, _ = proc.communicate(timeout=240)
    finally:
        app.halt.set()
        app.join()
    assert proc.returncode == 0, log.read_text()
    report = json.loads(out)
    assert report["rows_copied"] == 60_000
    held = report["throttle"]["source1"]
    assert held["waited_s"] > 0 and held["measured_on"] == "application", held
    with ApplierThread(co, name):
        time.sleep(1.0)
        co.wait(name, timeout=60)
    assert_targets_equal_source(env)


def test_no_application_holds_nothing_back_and_debeziums_stream_is_no_lagging_replica(env, tmp_path):
    """With no application session on the source the default copy is not held back. Then: a logical
    walsender reports replay only when its consumer confirms, so while the application writes tables
    the stream does not carry, Debezium's walsender shows a replay lag growing by the second. It is
    not a physical replica, and the throttle must not hold the copy for it."""
    name = env.migration()
    co = prepare(env, rows=30_000, migration=name)
    proc = _start(env, tmp_path, name)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, (tmp_path / "start.log").read_text()
    held = json.loads(out)["throttle"]["source1"]
    assert held["waited_s"] == 0 and held["state"] == "unthrottled", held
    assert held["latency_budget_ms"] == 5.0
    assert "copy unthrottled (adaptive, no application on the source; latency budget 5 ms)" in (
        tmp_path / "start.log").read_text()
    dsn = env.config.cluster("source1").dsn
    halt = threading.Event()

    def write() -> None:
        with psycopg.connect(dsn, autocommit=True, application_name="ledger") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS public.ledger_notes (id serial PRIMARY KEY, note text)")
            while not halt.wait(0.01):
                conn.execute("INSERT INTO public.ledger_notes (note) VALUES ('x')")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_for(lambda: (conn.execute(
                "SELECT max(extract(epoch FROM replay_lag)) FROM pg_stat_replication "
                "WHERE application_name LIKE 'Debezium%'").fetchone()[0] or 0) > 11, 60,
                "Debezium's walsender to show a replay lag past the throttle's 10 s")
        t = CopyThrottle(ThrottleSettings(), dsn)
        try:
            time.sleep(2 * LOOK_EVERY_S + 0.5)
            assert t.replica_lag_s() == 0.0
            assert "replica" not in t.reason, t.reason
        finally:
            t.close()
    finally:
        halt.set()
        writer.join()
    co.teardown(name)
