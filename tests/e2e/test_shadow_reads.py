"""Shadow and hedged reads of the router library on the real stack: a row changed on a
target behind reshard's back is reported by the shadow reads as exactly that key and
the cutover gate refuses; reads racing a busy write load with a lagging applier
differ in flight but settle as lag, never as a mismatch; after the cutover, a read
the new owner does not answer in time is answered by the old owner."""

import json
import random
import subprocess
import threading
import time

import psycopg

from reshard.control.states import State
from reshard.cutover.orchestrator import Outcome
from reshard.exit_codes import ExitCode
from reshard.router import Router
from tests.e2e.cutover_helpers import RouterLoad, moving_keys, setup
from tests.e2e.helpers import ApplierThread, reshard_cmd, wait_for, write_config_file

TABLE = "public.accounts"


def read_row(k: int):
    return lambda conn: conn.execute("SELECT id, owner, balance, note FROM accounts WHERE id = %s", (k,)).fetchall()


def shadowing(router: Router, name: str) -> bool:
    return any(m.name == name and m.state == State.SHADOWING for m in router._migrations)


def test_shadow_reads_name_a_key_changed_on_a_target_and_the_cutover_gate_refuses(env, tmp_path):
    co, name = setup(env, rows=3000, audit=False)
    co.start(name)
    with ApplierThread(co, name), Router.from_config(env.config) as router:
        co.wait(name, timeout=120)
        assert co.verify(name).equal
        keys = moving_keys(60)
        victim = keys[17]
        victim_owner = co.store.plan_of(co.store.migration(name)).owners(TABLE, [victim])[1]
        with env.conn(victim_owner) as conn:  # behind reshard's back: past the fence, outside the stream
            conn.execute("SET session_replication_role = replica")
            conn.execute("SET reshard.writer = 'applier'")
            conn.execute("UPDATE accounts SET note = 'tampered' WHERE id = %s", (victim,))

        cfg = write_config_file(env, tmp_path)
        out = subprocess.run(reshard_cmd(cfg, "shadow", name, "--sample", "1", "--json"),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["state"] == State.SHADOWING and doc["shadow"]["sample"] == 1.0
        wait_for(lambda: shadowing(router, name), 10, "the router to pick up the shadow sample")

        staying = [k for k in range(1, 200) if k not in set(moving_keys(2000))][:20]
        for k in keys + staying:
            answer = router.read(TABLE, [k], read_row(k))
            assert answer and answer[0][0] == k  # the application gets the owner's answer
        assert router.shadow.drain(120)
        counts = router.stats()["shadow"][TABLE]
        assert counts["sampled"] == len(keys), counts  # keys that stay are never shadowed
        assert counts["mismatches"] == 1 and counts["matched"] == len(keys) - 1, counts

        found = [e["detail"] for e in co.store.recent_events(name, 50) if e["event"] == "shadow.mismatch"]
        assert [(d["key"], d["problem"]) for d in found] == [([str(victim)], "values differ")]
        router.report()
        (mine,) = [r for r in co.store.router_reports() if r["router"] == router.name]
        assert mine["shadow"][TABLE]["mismatches"] == 1 and mine["counters"]["reads"] == len(keys) + len(staying)
        status = co.status(name)
        assert status["state"] == State.SHADOWING
        assert status["verification"]["mode"] == "shadow" and status["verification"]["equal"] is False
        assert status["routers"]["reporting"] >= 1
        assert status["routers"]["shadow"]["tables"][TABLE]["mismatches"] >= 1

        result = co.cutover(name)
        assert result.outcome == Outcome.GATES and result.exit_code == ExitCode.GATE_UNVERIFIED, result
        assert co.store.active_epoch() == co.store.migration(name).from_epoch

        off = subprocess.run(reshard_cmd(cfg, "shadow", name, "--off", "--json"), capture_output=True, text=True,
                             timeout=60)
        assert off.returncode == 0 and json.loads(off.stdout)["shadow"] is None, off.stderr
        assert co.store.migration(name).state == State.STREAMING


def test_reads_racing_a_busy_load_with_a_lagging_applier_settle_as_lag_not_mismatch(env):
    co, name = setup(env, rows=4000, audit=False)
    co.start(name)
    co.shadow(name, 1.0, {})
    load = RouterLoad(env.config, threads=4, rate=300, keyspace=4000, wait_switching=None, max_seconds=120)
    load.start()
    time.sleep(3.0)  # a backlog builds: nothing applies yet, so the new owners lag
    stop = threading.Event()
    reads = {"n": 0}

    def reader(router: Router) -> None:
        rng = random.Random(3)
        while not stop.is_set():
            k = rng.randrange(1, 4001)
            router.read(TABLE, [k], read_row(k))
            reads["n"] += 1
            stop.wait(0.005)

    with Router.from_config(env.config) as router:
        wait_for(lambda: shadowing(router, name), 10, "the router to pick up the shadow sample")
        t = threading.Thread(target=reader, args=(router,))
        t.start()
        time.sleep(4.0)  # reads while the new owners are behind
        with ApplierThread(co, name):
            time.sleep(6.0)  # and while they catch up under the load
            stop.set()
            t.join()
            assert router.shadow.drain(240)
        stats = load.stop()
        counts = router.stats()["shadow"][TABLE]
    assert stats.writes > 1000 and not stats.failed, stats
    assert counts["differed"] > 0, f"no read saw lag: the test proved nothing ({counts})"
    assert counts["mismatches"] == 0 and counts["errors"] == 0, counts
    assert counts["lag"] >= 1 and counts["matched"] + counts["differed"] == counts["sampled"], counts
    assert not [e for e in co.store.recent_events(name, 200) if e["event"] == "shadow.mismatch"]


def test_after_the_cutover_a_read_the_new_owner_does_not_answer_in_time_is_hedged_to_the_old(env):
    co, name = setup(env, rows=2000, audit=False)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=120)
        assert co.verify(name).equal
        result = co.cutover(name)
        assert result.exit_code == ExitCode.OK, result
        k = moving_keys(1)[0]
        with Router.from_config(env.config, hedge_after=0.3) as router:
            wait_for(lambda: any(m.state == State.BAKING for m in router._migrations), 10, "the router to see it")
            new_owner = router.owner(TABLE, [k])
            assert new_owner != "source1"
            assert router.read(TABLE, [k], read_row(k))[0][0] == k  # quick: no hedge
            assert router.stats()["hedged"] == 0
            with psycopg.connect(env.dsn(new_owner)) as blocker:  # the new owner stalls this table's reads
                blocker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
                t0 = time.monotonic()
                answer = router.read(TABLE, [k], read_row(k))
                took = time.monotonic() - t0
                blocker.rollback()
            assert answer and answer[0][0] == k
            assert took < 3.0, took
            s = router.stats()
            assert s["hedged"] == 1 and s["hedge_won"] == 1 and s["errors"] == 0, s
