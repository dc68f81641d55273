"""The bake after a cutover, on the real stack: a user check that starts failing, or a
jump in the routers' error rate, rolls the migration back by itself, and every write
acknowledged on the targets during the bake is on the sources afterwards; Prometheus
queries are asked of a real Prometheus; a clean bake completes with --complete-after-bake."""

import json
import subprocess
import threading
import time
from contextlib import contextmanager

import psycopg

from reshard.control.states import State
from reshard.cutover.bake import BakeOptions, Baker, run_query
from reshard.cutover.orchestrator import SwitchOptions
from reshard.exit_codes import ExitCode
from reshard.kafka.streams import Direction
from reshard.router import Router
from reshard.stack.stack import free_port
from reshard.stack.workload import TABLE
from tests.e2e.cutover_helpers import CLUSTERS, RouterLoad, assert_acked_on_owners, moving_keys, setup
from tests.e2e.helpers import ApplierThread, assert_verified, reshard_cmd, wait_for, write_config_file
from tests.monitoring import prometheus_binary


def _events(co, name: str) -> list[str]:
    return [e["event"] for e in co.store.recent_events(name, 200)]


def test_a_failing_user_check_rolls_back_and_the_bakes_writes_are_on_the_sources(env, tmp_path):
    co, name = setup(env)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    unhealthy = tmp_path / "unhealthy"
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        load = RouterLoad(env.config, threads=2, rate=200, seed=5).start()
        try:
            proc = subprocess.Popen(
                reshard_cmd(cfg, "cutover", name, "--bake", "120s", "--bake-interval", "1",
                            "--bake-check", f"test ! -e {unhealthy}", "--json"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_for(lambda: proc.poll() is not None or co.store.migration(name).state == State.BAKING, 90,
                     "the cutover")
            if proc.poll() is not None:
                failed = json.loads(proc.communicate()[0])
                raise AssertionError(f"the cutover did not cut over: {failed['message']} {failed['steps']}")
            cut_epoch = co.store.active_epoch()
            time.sleep(4.0)  # the targets take writes during the bake
            unhealthy.touch()  # the user's check starts failing
            out, err = proc.communicate(timeout=120)
            time.sleep(1.0)  # writes go on, to the sources again
        finally:
            stats = load.stop()
        assert proc.returncode == ExitCode.BAKE_ROLLED_BACK, err[-3000:]
        doc = json.loads(out)
        bake = doc["bake"]
        assert bake["outcome"] == "rolled_back" and bake["trigger"]["name"] == "check", bake
        assert bake["trigger"]["evidence"]["exit"] == 1
        assert bake["rollback"]["outcome"] == "done" and bake["rollback"]["pause_ms"] < 2000, bake["rollback"]
        assert co.store.migration(name).state == State.ROLLED_BACK
        events = _events(co, name)
        for kind in ("bake.started", "bake.trigger", "bake.rolled_back"):
            assert kind in events, kind
        co.wait(name, timeout=60)
    assert stats.rejected == 0 and not stats.failed, stats
    # writes the targets acknowledged during the bake...
    during = 0
    for c in CLUSTERS[1:]:
        with env.conn(c) as conn:
            during += conn.execute("SELECT count(*) FROM app_writes WHERE epoch = %s", (cut_epoch,)).fetchone()[0]
    assert during > 100, during
    # ...and every acknowledged write is on its owner now: the sources
    assert co.store.active_epoch() != cut_epoch
    assert assert_acked_on_owners(env, load.acked, co) > 500


@contextmanager
def prometheus(tmp_path):
    """A real Prometheus on loopback (no scrape targets: the bake's queries are expressions)."""
    port = free_port()
    (tmp_path / "prometheus.yml").write_text("global:\n  evaluation_interval: 1s\n")
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([str(prometheus_binary()), f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: run_query(url, "vector(0)", 2) is None, 30, "Prometheus to answer")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_jump_in_the_routers_error_rate_rolls_back(env, tmp_path):
    co, name = setup(env, rows=2000, audit=False)
    co.start(name)
    keys = moving_keys(50)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        assert co.cutover(name).exit_code == ExitCode.OK
        stop, failing = threading.Event(), threading.Event()

        def reads(router: Router) -> None:
            i = 0
            while not stop.is_set():
                k = keys[i % len(keys)]
                i += 1
                sql = "SELECT * FROM no_such_table" if failing.is_set() else "SELECT id FROM accounts WHERE id = %s"
                try:
                    router.read("public.accounts", [k], lambda conn, sql=sql, k=k: conn.execute(
                        sql, (k,) if "%s" in sql else None).fetchall())
                except psycopg.Error:
                    pass
                stop.wait(0.01)

        with Router.from_config(env.config, report_every=1.0) as router, prometheus(tmp_path) as prom:
            t = threading.Thread(target=reads, args=(router,))
            t.start()
            try:
                # a first, short bake: healthy reads and a quiet Prometheus query, no trigger,
                # still baking afterwards
                quiet = BakeOptions(duration=4, interval=1, window=5, prometheus_url=prom,
                                    queries=["sum(vector(0))", "absent(vector(1))"])
                clean = Baker(co, name, quiet, SwitchOptions()).run()
                assert clean.outcome == "clean" and clean.trigger is None and clean.looks >= 3, clean
                loud = run_query(prom, "vector(1) * 2", 5)  # what a firing query looks like to the bake
                assert loud is not None and loud.name == "prometheus" and loud.evidence["values"] == [2.0], loud
                assert co.store.migration(name).state == State.BAKING
                threading.Timer(3.0, failing.set).start()  # then the routers' reads start failing
                result = Baker(co, name, BakeOptions(duration=60, interval=1, window=5), SwitchOptions()).run()
            finally:
                stop.set()
                t.join()
        assert result.outcome == "rolled_back" and result.exit_code == ExitCode.BAKE_ROLLED_BACK, result
        assert result.trigger.name == "routers.error_rate" and result.trigger.evidence["rate"] > 0.05, result.trigger
        assert result.seconds < 30, result.seconds
        assert co.store.migration(name).state == State.ROLLED_BACK
        routing = co.store.active()[1]  # the sources' map again (under a new epoch)
        assert routing.digest() == co.store.get_map(co.store.migration(name).from_epoch).digest()
        assert "bake.clean" in _events(co, name)


def test_a_clean_bake_completes_with_complete_after_bake(env, tmp_path):
    co, name = setup(env, rows=1000, audit=False)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        out = subprocess.run(reshard_cmd(cfg, "cutover", name, "--bake", "3s", "--bake-interval", "1",
                                         "--bake-check", "true", "--complete-after-bake", "--json"),
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    bake = json.loads(out.stdout)["bake"]
    assert bake["outcome"] == "clean" and bake["trigger"] is None and bake["completed"], bake
    assert co.store.migration(name).state == State.COMPLETE
    bad = subprocess.run(reshard_cmd(cfg, "cutover", name, "--complete-after-bake"), capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == ExitCode.BAD_INPUT and "--bake DURATION" in bad.stderr, bad.stderr


def test_the_bake_compares_the_reconciliation_checks_and_a_disagreement_rolls_back(env, tmp_path):
    """A probe every 2 s (the rollback's pause up to the checks, backed out) agrees while a
    router load writes; then a row changes on a target and no stream carries it (written
    under the forward applier's replication origin, which the reverse stream skips as an
    echo): the next probe disagrees and the bake rolls back, losing no acknowledged write."""
    co, name = setup(env, rows=2000, audit=False)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    rules = tmp_path / "checks.yaml"
    rules.write_text(json.dumps({"checks": [{"name": "ledger", "table": TABLE,
                                             "aggregates": ["sum(balance)", "count(*)"]}]}))
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        # the load writes keys 1..1000 (a write of the victim would carry its whole row back)
        load = RouterLoad(env.config, threads=2, rate=100, seed=9, keyspace=1000).start()
        try:
            proc = subprocess.Popen(
                reshard_cmd(cfg, "cutover", name, "--reconcile", str(rules), "--bake", "120s", "--bake-interval", "1",
                            "--bake-reconcile-every", "2", "--json"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            def probes() -> list[dict]:
                return [e["detail"] for e in co.store.recent_events(name, 200) if e["event"] == "bake.reconciled"]

            wait_for(lambda: proc.poll() is not None or len(probes()) >= 2, 120, "two reconciliation probes")
            assert proc.poll() is None, proc.communicate()
            assert all(p["outcome"] == "reconciled" for p in probes()), probes()
            assert co.store.migration(name).state == State.BAKING
            with env.conn("target1") as conn:  # behind the streams' back
                victim = conn.execute(f"SELECT min(id) FROM {TABLE} WHERE id > 1000").fetchone()[0]
                origin = f"reshard_{Direction.FORWARD}_{name}_tamper"  # the forward applier's pool prefix
                conn.execute("SELECT pg_replication_origin_create(%s)", (origin,))
                conn.execute("SELECT pg_replication_origin_session_setup(%s)", (origin,))
                conn.execute(f"UPDATE {TABLE} SET balance = balance + 1000 WHERE id = %s", (victim,))
                conn.execute("SELECT pg_replication_origin_session_reset()")
                conn.execute("SELECT pg_replication_origin_drop(%s)", (origin,))
            out, err = proc.communicate(timeout=120)
            time.sleep(1.0)  # writes go on, to the sources again
        finally:
            stats = load.stop()
        assert proc.returncode == ExitCode.BAKE_ROLLED_BACK, err[-3000:]
        bake = json.loads(out)["bake"]
        assert bake["trigger"]["name"] == "reconciliation", bake["trigger"]
        (differs,) = bake["trigger"]["evidence"]["checks"]
        assert differs["check"] == "ledger" and differs["source"] == "target1", differs  # the rollback's move: from target1
        assert [p["outcome"] for p in bake["reconciliations"]][-1] == "reconciliation_failed", bake["reconciliations"]
        assert all(p["pause_ms"] < 2000 for p in bake["reconciliations"]), bake["reconciliations"]
        assert bake["rollback"]["outcome"] == "done", bake["rollback"]
        assert co.store.migration(name).state == State.ROLLED_BACK
        co.wait(name, timeout=60)
    assert stats.rejected == 0 and not stats.failed, stats
    assert assert_acked_on_owners(env, load.acked, co) > 200


def test_a_bake_whose_final_reconciliation_cannot_run_is_not_clean_and_completes_nothing(env):
    """Another process holds the migration's lease through the bake's end: the final
    probe cannot run in three tries, so the bake is `unreconciled` with the refusal's exit
    code, --complete-after-bake completes nothing, and the migration is still baking."""
    co, name = setup(env, rows=1000, audit=False)
    co.start(name)
    rules = [{"name": "ledger", "table": TABLE, "aggregates": ["sum(balance)", "count(*)"]}]
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        assert co.cutover(name).exit_code == ExitCode.OK
        with co.store.lease(name, "a test holding it"):
            result = Baker(co, name, BakeOptions(duration=1, interval=0.5, complete_after=True),
                           SwitchOptions(reconcile=rules)).run()
        assert result.outcome == "unreconciled" and result.trigger is None and result.completed is None, result
        assert len(result.reconciliations) == 3 and "busy" in result.reconciliations[-1]["message"], result
        assert result.exit_code == result.reconciliations[-1]["exit_code"] != ExitCode.OK, result
        assert co.store.migration(name).state == State.BAKING
        assert "bake.unreconciled" in _events(co, name) and "bake.clean" not in _events(co, name)
        # with the lease free, the same bake's probe runs and agrees: clean
        clean = Baker(co, name, BakeOptions(duration=1, interval=0.5), SwitchOptions(reconcile=rules)).run()
        assert clean.outcome == "clean" and [p["outcome"] for p in clean.reconciliations] == ["reconciled"], clean
