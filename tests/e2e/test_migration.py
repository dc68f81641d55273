"""A live migration on the real stack: snapshot -> Debezium -> Kafka -> applier -> targets."""

import time

from reshard.stack.workload import Workload
from tests.e2e.helpers import ApplierThread, assert_targets_equal_source, assert_verified, prepare, wait_for


def test_split_under_concurrent_writes_ends_row_for_row_equal(env):
    name = env.migration()
    co = prepare(env, rows=20_000, migration=name)
    load = Workload(env.dsn("source1"), rate=300, max_seconds=120, seed=1)
    load.start()
    try:
        time.sleep(1.0)  # writes before the slot exists must be in the copy
        report = co.start(name, batch_rows=4000)
        assert report.rows >= 20_000 and not report.resumed
        with ApplierThread(co, name) as applier:
            time.sleep(6.0)  # writes after the slot must arrive through the stream
            # on a busy machine the load may fall behind its rate: let it reach what is checked below
            wait_for(lambda: load.stats.operations > 1000 and load.stats.deletes > 50
                     and load.stats.key_changes > 10 and load.stats.toast_keeping_updates > 50, 90,
                     "the load to write enough of each kind")
            stats = load.stop()
            caught = co.wait(name, timeout=120)
        assert "stats" in applier.result
    finally:
        load.stop()
    assert stats.errors == 0, stats.last_error
    assert stats.operations > 1000 and stats.deletes > 50 and stats.key_changes > 10
    assert stats.toast_keeping_updates > 50
    assert caught.seconds < 60
    n = assert_targets_equal_source(env)
    assert n > 20_000
    v = co.verify(name)
    assert_verified(v)
    assert {c.target for c in v.checks} == {"target1", "target2"}
    assert all(c.target_rows > 5000 for c in v.checks)


def test_verify_names_the_differing_keys(env):
    name = env.migration()
    co = prepare(env, rows=2_000, migration=name)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
    assert co.verify(name).equal
    # damage the targets behind reshard's back: one row changed, one removed, one misplaced
    with env.conn("target1") as t1, env.conn("target2") as t2:
        k1 = t1.execute("SELECT min(id) FROM public.accounts").fetchone()[0]
        k2 = t2.execute("SELECT min(id) FROM public.accounts").fetchone()[0]
        t1.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = %s", (k1,))
        t2.execute("DELETE FROM public.accounts WHERE id = %s", (k2,))
        t1.execute("INSERT INTO public.accounts (id, owner, balance) VALUES (%s, 'x', 0)", (k2,))
    v = co.verify(name)
    assert not v.equal
    problems = {(str(d["key"][0]), d["problem"]) for c in v.checks for d in c.differences}
    assert (str(k1), "values differ") in problems
    assert (str(k2), "missing on target2") in problems
    assert any(c.misplaced_rows == 1 for c in v.checks)
