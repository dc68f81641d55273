"""The continuous checker (verify --continuous) on the real stack: divergence made behind
reshard's back is found and named, the cutover's verification gate then refuses; a busy
load with a lagging applier produces differing chunks that settle under row locks, and
no false mismatch."""

import json
import subprocess
import threading
import time

from reshard.cutover.orchestrator import Outcome
from reshard.exit_codes import ExitCode
from reshard.proof.continuous_check import ContinuousChecker
from reshard.stack.workload import TABLE, Workload
from tests.e2e.helpers import ApplierThread, prepare, reshard_cmd, write_config_file


def test_divergence_on_a_target_is_found_named_and_refused_by_the_cutover_gate(env, tmp_path):
    name = env.migration()
    co = prepare(env, 3000, name)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=120)
        assert co.verify(name).equal
        with env.conn("target2") as conn:  # behind reshard's back: no fence trigger, no stream
            victim = conn.execute(f"SELECT min(id) FROM {TABLE}").fetchone()[0]
            conn.execute("SET session_replication_role = replica")
            conn.execute(f"UPDATE {TABLE} SET note = 'tampered' WHERE id = %s", (victim,))
        cfg = write_config_file(env, tmp_path)
        out = subprocess.run(reshard_cmd(cfg, "verify", name, "--continuous", "--passes", "1", "--chunk-rows", "400",
                                         "--json"), capture_output=True, text=True, timeout=300)
        assert out.returncode == ExitCode.CHECK_FAILED, out.stderr[-3000:]
        doc = json.loads(out.stdout)
        assert doc["mode"] == "continuous" and doc["equal"] is False
        (only,) = doc["passes"]
        assert only["complete"] and only["chunks"] >= 8 and only["rows"] == 3000, only
        assert [(m["key"], m["problem"]) for m in only["mismatches"]] == [([str(victim)], "values differ")]

        status = co.status(name)
        assert status["verification"]["mode"] == "continuous" and status["verification"]["equal"] is False
        kinds = [e["event"] for e in co.store.recent_events(name, 20)]
        assert "check.mismatch" in kinds and "check.pass" in kinds
        result = co.cutover(name)
        assert result.outcome == Outcome.GATES and result.exit_code == ExitCode.GATE_UNVERIFIED, result
        assert co.store.active_epoch() == co.store.migration(name).from_epoch


def test_a_busy_load_with_a_lagging_applier_reports_no_false_divergence(env):
    name = env.migration()
    co = prepare(env, 4000, name)
    co.start(name)
    load = Workload(env.dsn("source1"), rate=300, max_seconds=120, seed=7)
    load.start()
    time.sleep(3.0)  # a backlog builds: nothing applies yet
    applier = ApplierThread(co, name)
    # the applier starts two seconds into the first pass: its first chunks differ in flight
    starter = threading.Timer(2.0, applier.__enter__)
    starter.start()
    try:
        results = ContinuousChecker(co, name, chunk_rows=300, max_rows_per_second=3000).run(passes=2)
    finally:
        starter.join()
        stats = load.stop()
        applier.__exit__(None, None, None)
    assert stats.operations > 500 and not stats.errors, stats
    assert [r.complete for r in results] == [True, True]
    assert sum(r.rechecked_chunks for r in results) > 0, "no chunk was in flight: the test proved nothing"
    assert all(r.equal for r in results), [m for r in results for m in r.mismatches]
