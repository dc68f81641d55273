"""Canary waves, `reshard complete`, `reshard abort`, and the scheduled-job interface."""

import json
import subprocess
from datetime import datetime, timedelta

from reshard.control.states import State
from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover
from reshard.exit_codes import ExitCode
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import dlq_topic
from tests.e2e.cutover_helpers import RouterLoad, acceptors, assert_acked_on_owners, moving_keys, setup
from tests.e2e.helpers import ApplierThread, assert_verified, reshard_cmd, spawn, write_config_file


def cli(cfg, *args):
    return subprocess.run(reshard_cmd(cfg, *args), capture_output=True, text=True, timeout=180)


def slots(env, cluster):
    with env.conn(cluster) as conn:
        return [r[0] for r in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()").fetchall()]


def test_canary_wave_then_the_rest_then_complete(env, tmp_path):
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        load = RouterLoad(env.config, threads=2, rate=150, seed=7).start()
        try:
            canary = cutover(env.config, co.store, name, SwitchOptions(only="0.1"))
            assert canary.outcome == Outcome.DONE, canary.message
            waves = co.store.waves(name)
            assert len(waves) == 1 and waves[0]["state"] == "cut"
            cut = sum(len(b) for b in waves[0]["buckets"].values())
            assert 250 < cut < 350  # a tenth of the 3,072 moving buckets
            assert co.store.migration(name).state == State.STREAMING  # the rest is still moving
            _epoch, active = co.store.active()
            owners = {active.owner("public.accounts", [k]) for k in moving_keys(200)}
            assert "source1" in owners and owners & {"target1", "target2"}  # half-way: some moved, some not
            rest = cutover(env.config, co.store, name, SwitchOptions())
            assert rest.outcome == Outcome.DONE and rest.wave == 2, rest.message
            assert co.store.migration(name).state == State.BAKING
        finally:
            stats = load.stop()
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
    assert stats.rejected == 0
    assert_acked_on_owners(env, load.acked, co)
    with env.conn("source1") as conn:
        on_source_before = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]

    applier = spawn(cfg, tmp_path / "apply.log", "apply", name)  # a worker left running over complete
    refused = cli(cfg, "complete", name)  # no terminal, no --yes
    assert refused.returncode == ExitCode.BAD_INPUT and "--yes" in refused.stderr
    done = cli(cfg, "complete", name, "--yes", "--batch-rows", "500", "--json")
    assert done.returncode == 0, done.stderr
    deleted = json.loads(done.stdout)["deleted_rows"]
    assert deleted > 1000
    forgot = next(s for s in json.loads(done.stdout)["steps"] if s["step"] == "forget")
    assert set(forgot["dropped"]) == {"source1", "target1", "target2"}, forgot  # each origin once, per cluster
    assert all(len(names) == len(set(names)) for names in forgot["dropped"].values()), forgot
    assert forgot["dead_letter_topic_dropped"] == dlq_topic(name)
    with KafkaAdmin(env.config.kafka) as admin:
        assert dlq_topic(name) not in admin.topics()
    try:  # the worker saw the migration complete and stopped by itself
        assert applier.wait(timeout=60) == 0
    finally:
        if applier.poll() is None:
            applier.kill()
    assert "nothing is left to apply" in (tmp_path / "apply.log").read_text()
    assert co.store.migration(name).state == State.COMPLETE
    with env.conn("source1") as conn:
        left = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
    assert left == on_source_before - deleted
    _e, final = co.store.active()
    with env.conn("source1") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM accounts").fetchall()]
    assert all(final.owner("public.accounts", [k]) == "source1" for k in ids)  # only staying keys remain
    assert all(not slots(env, c) for c in ("source1", "target1", "target2"))
    assert not [c for c in ConnectClient(env.config.connect).connectors() if c.startswith(f"reshard-{name}")]
    for k in moving_keys(5):
        assert len(acceptors(env, k)) == 1  # the final map's fence stays
    again = cli(cfg, "complete", name, "--yes", "--json")
    assert again.returncode == 0
    late = cli(cfg, "rollback", name)  # past the point of no return
    assert late.returncode == ExitCode.BAD_INPUT and "rollback is possible until `complete`" in late.stderr


def test_scheduled_cutover_interface(env, tmp_path):
    co, name = setup(env, rows=1000, audit=False)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    now = datetime.now()
    later = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
    outside = cli(cfg, "cutover", name, "--window", later, "--json")
    assert outside.returncode == ExitCode.OUTSIDE_WINDOW
    assert json.loads(outside.stdout)["outcome"] == "outside_window"

    unverified = cli(cfg, "cutover", name, "--json")  # no verification yet, no applier
    assert unverified.returncode == ExitCode.GATE_UNVERIFIED, unverified.stderr
    doc = json.loads(unverified.stdout)
    assert doc["outcome"] == "gates_not_met"
    assert {g["gate"]: g["ok"] for g in doc["gates"]} == {"streams": True, "lag": True, "verified": False,
                                                          "reverse": True, "applier": False}
    no_applier = cli(cfg, "cutover", name, "--skip-verify-gate", "--wait-for-gates", "2", "--json")
    assert no_applier.returncode == ExitCode.GATE_APPLIER
    with env.conn("source1") as conn:
        fence_before = conn.execute("SELECT epoch, mode FROM reshard.fence_state").fetchall()

    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert co.verify(name).equal
        dry = cli(cfg, "cutover", name, "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["outcome"] == "dry_run" and len(plan["plan"]) >= 8
        assert any("fence on source1" in s for s in plan["plan"])
        assert any("wait until slot" in s for s in plan["plan"])
        assert not co.store.attempts(name) and not co.store.reverse_streams(name)  # nothing written
        with env.conn("source1") as conn:
            assert conn.execute("SELECT epoch, mode FROM reshard.fence_state").fetchall() == fence_before
        now = datetime.now()
        window = f"{(now - timedelta(minutes=5)):%H:%M}-{(now + timedelta(minutes=30)):%H:%M}"
        real = cli(cfg, "cutover", name, "--window", window, "--wait-for-gates", "30", "--json")
        assert real.returncode == 0, real.stdout + real.stderr
        result = json.loads(real.stdout)
        assert result["outcome"] == "done" and result["pause_ms"] < 2000
    assert co.store.migration(name).state == State.BAKING


def test_abort_before_cutover_asks_first_and_leaves_the_sources_as_they_were(env, tmp_path):
    co, name = setup(env, rows=2000, audit=False)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    with env.conn("source1") as conn:
        before = conn.execute("SELECT count(*), sum(balance) FROM accounts").fetchone()
    assert cli(cfg, "abort", name).returncode == ExitCode.BAD_INPUT  # no terminal to ask, no --yes
    done = cli(cfg, "abort", name, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    actions = json.loads(done.stdout)["actions"]
    assert any("dropped slot" in a for a in actions) and any("deleted connector" in a for a in actions)
    assert co.store.migration(name).state == State.ABORTED
    with env.conn("source1") as conn:
        assert conn.execute("SELECT count(*), sum(balance) FROM accounts").fetchone() == before
        assert not conn.execute("SELECT 1 FROM pg_publication").fetchone()
    for t in ("target1", "target2"):
        with env.conn(t) as conn:
            assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 0
    assert all(not slots(env, c) for c in ("source1", "target1", "target2"))


def test_abort_is_refused_once_a_wave_is_cut(env, tmp_path):
    co, name = setup(env, rows=500, audit=False)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert co.verify(name).equal
        assert cutover(env.config, co.store, name, SwitchOptions(only="0.5")).outcome == Outcome.DONE
    refused = cli(cfg, "abort", name, "--yes")
    assert refused.returncode == ExitCode.BAD_INPUT and "rollback" in refused.stderr
