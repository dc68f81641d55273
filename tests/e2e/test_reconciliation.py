"""Reconciliation checks at the fence: a row changed on a target behind reshard's back makes
the user's aggregate disagree inside the write pause; the cutover backs out (exit 13)
with routing unchanged and the source writable, and nothing is lost: the next write of
that row streams over the damage and the cutover then passes with the same checks."""

import json
import signal
import subprocess
import time

import yaml

from reshard.control.store import ControlStore
from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover
from reshard.exit_codes import ExitCode
from reshard.stack.demo import demo_maps
from reshard.stack.workload import TABLE, create_table, seed
from tests.e2e.cutover_helpers import RouterLoad, assert_acked_on_owners, moving_keys, setup
from tests.e2e.helpers import (
    TARGETS,
    ApplierThread,
    assert_targets_equal_source,
    assert_verified,
    reshard_cmd,
    spawn,
    write_config_file,
)

RULES = {"checks": [
    {"name": "ledger", "table": TABLE, "aggregates": ["sum(balance)", "count(*)"]},
    {"name": "per_owner", "table": TABLE, "aggregates": ["sum(balance)"], "group_by": ["owner"]},
]}


def _cli(cfg, *args, expect=0):
    out = subprocess.run(reshard_cmd(cfg, *args, "--json"), capture_output=True, text=True, timeout=300)
    assert out.returncode == expect, (args, out.returncode, out.stderr[-3000:])
    return json.loads(out.stdout)


def _started(env, tmp_path, rows: int):
    """The sample table split 1 -> 2, copied and streaming; returns (config path, migration)."""
    for cluster in ("source1", *TARGETS):
        with env.conn(cluster) as conn:
            create_table(conn)
            if cluster == "source1":
                seed(conn, rows)
    cfg = write_config_file(env, tmp_path)
    before, after = demo_maps(TARGETS)
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(before))
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))
    name = env.migration()
    _cli(cfg, "start", name, "--to", str(tmp_path / "after.yaml"), "--from", str(tmp_path / "before.yaml"))
    return cfg, name


def test_a_target_row_changed_behind_reshards_back_fails_reconciliation_at_the_fence(env, tmp_path):
    cfg, name = _started(env, tmp_path, 2000)
    rules = tmp_path / "checks.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    applier = spawn(cfg, tmp_path / "apply.log", "apply", name, "--metrics-port", "0")
    try:
        _cli(cfg, "wait", name)
        assert _cli(cfg, "verify", name)["equal"] is True
        store = ControlStore(env.config.control_dsn)
        epoch_before = store.active_epoch()

        # behind reshard's back: a moved row on target1 changes, bypassing the fence trigger
        with env.conn("target1") as conn:
            victim, owner = conn.execute(f"SELECT id, owner FROM {TABLE} ORDER BY id LIMIT 1").fetchone()
            conn.execute("SET session_replication_role = replica")
            conn.execute(f"UPDATE {TABLE} SET balance = balance + 0.01 WHERE id = %s", (victim,))

        cut = _cli(cfg, "cutover", name, "--reconcile", str(rules), expect=ExitCode.RECONCILE_FAILED)
        assert cut["outcome"] == "reconciliation_failed", cut
        failed = {(c["check"], c["target"]) for c in cut["reconciliation"] if not c["ok"]}
        assert failed == {("ledger", "target1"), ("per_owner", "target1")}, cut["reconciliation"]
        per_owner = next(c for c in cut["reconciliation"] if c["check"] == "per_owner" and not c["ok"])
        assert per_owner["differences"] == [{
            "group": {"owner": owner},
            "source": {"sum(balance)": per_owner["differences"][0]["source"]["sum(balance)"]},
            "target": {"sum(balance)": per_owner["differences"][0]["target"]["sum(balance)"]}}]
        assert per_owner["differences"][0]["source"] != per_owner["differences"][0]["target"]
        assert "routing unchanged" in cut["message"]
        assert store.active_epoch() == epoch_before  # routing never flipped
        attempt = store.attempts(name)[-1]
        assert attempt["state"] == "aborted" and attempt["result"]["reconciliation"], attempt

        # the source owns the key and takes writes; the write streams over the damaged row
        with env.conn("source1") as conn:
            conn.execute(f"UPDATE {TABLE} SET balance = 42.00 WHERE id = %s", (victim,))
        _cli(cfg, "wait", name)
        assert_targets_equal_source(env)
        again = _cli(cfg, "cutover", name)  # the checks were kept with the migration
        assert again["outcome"] == "done", again
        assert again["reconciliation"] and all(c["ok"] for c in again["reconciliation"]), again["reconciliation"]
        assert store.active_epoch() != epoch_before
    finally:
        applier.send_signal(signal.SIGTERM)
        applier.wait(timeout=60)
    assert applier.returncode == 0, (tmp_path / "apply.log").read_text()[-3000:]


def test_checks_that_do_not_compile_are_refused_before_anything_is_fenced(env, tmp_path):
    cfg, name = _started(env, tmp_path, 200)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"checks": [{"name": "x", "table": TABLE, "aggregates": ["sum(amount)"]}]}))
    out = subprocess.run(reshard_cmd(cfg, "cutover", name, "--reconcile", str(bad)), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == ExitCode.BAD_INPUT, out.stderr
    assert "reconciliation check x does not run on" in out.stderr and "amount" in out.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"checks": [{"name": "x", "table": TABLE, "aggregate": ["count(*)"]}]}))
    out = subprocess.run(reshard_cmd(cfg, "cutover", name, "--reconcile", str(typo)), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == ExitCode.BAD_INPUT and "checks[0].aggregate: unknown key" in out.stderr, out.stderr


def test_a_failing_reconciliation_under_a_live_router_load_backs_out_and_loses_nothing(env):
    """The same disagreement found while routers write: the fence, the checks and the
    back-out all happen under the load, no write is refused past the routers' bound,
    and every acknowledged write is on its owner (the source) afterwards."""
    co, name = setup(env, rows=5000, audit=False)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        # a moving key the load never writes (it writes keys 1..4000): the damage stays
        victim = next(k for k in moving_keys(4000) if k > 4000)
        target = co.store.plan_of(co.store.migration(name)).owners(TABLE, [victim])[1]
        with env.conn(target) as conn:
            conn.execute("SET reshard.writer = 'applier'")  # past the fence, outside the stream
            conn.execute(f"UPDATE {TABLE} SET balance = balance + 0.01 WHERE id = %s", (victim,))
        epoch_before = co.store.active_epoch()
        load = RouterLoad(env.config, threads=2, rate=200, keyspace=4000, seed=9).start()
        try:
            time.sleep(1.5)
            result = cutover(env.config, co.store, name, SwitchOptions(reconcile=RULES["checks"]))
            time.sleep(1.5)  # writes go on where they were
        finally:
            stats = load.stop()
        assert result.outcome == Outcome.RECONCILE_FAILED and result.exit_code == ExitCode.RECONCILE_FAILED, result.message
        failed = {(c["check"], c["target"]) for c in result.reconciliation if not c["ok"]}
        assert ("ledger", target) in failed, result.reconciliation
        assert result.unfenced_after_ms < 2000, result.unfenced_after_ms
        assert co.store.active_epoch() == epoch_before  # routing never flipped
        co.wait(name, timeout=60)
    assert stats.rejected == 0 and not stats.failed, stats
    assert stats.writes > 300, stats
    assert assert_acked_on_owners(env, load.acked, co) > 300
