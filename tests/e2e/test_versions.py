"""The core path on every supported PostgreSQL major, and from an older source to newer
targets (how teams upgrade while they reshard): copy, stream under a write load through
the router, verify, cutover, rollback, cutover again, complete. The servers are the real
builds of each major (pg_binaries.py); Kafka, Connect, Debezium and the registry are the
session's stack."""

import time

import pytest

from reshard.control.states import State
from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover, rollback
from tests.e2e.cutover_helpers import CLUSTERS, RouterLoad, acceptors, assert_acked_on_owners, moving_keys, setup
from tests.e2e.helpers import ApplierThread, assert_verified

MATRIX = [(15, 15), (16, 16), (17, 17), (15, 18)]


def _failover_slots(env, cluster: str) -> list[bool] | None:
    """Whether each of the test's slots on ``cluster`` is a failover slot (None: the server has none, < 17)."""
    with env.conn(cluster) as conn:
        if _major(env, cluster) < 17:
            return None
        return [r[0] for r in conn.execute("SELECT failover FROM pg_replication_slots WHERE database = current_database()")]


def _major(env, cluster: str) -> int:
    with env.conn(cluster) as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000


@pytest.mark.parametrize("versioned_env", MATRIX, indirect=True, ids=[f"pg{s}-to-pg{t}" for s, t in MATRIX])
def test_copy_stream_cutover_rollback_complete(versioned_env, request):
    env = versioned_env
    source, target = request.node.callspec.params["versioned_env"]
    assert [_major(env, c) for c in CLUSTERS] == [source, target, target]
    co, name = setup(env, rows=3_000)
    report = co.start(name)
    assert report.rows > 1_000
    with ApplierThread(co, name):
        load = RouterLoad(env.config, threads=2, rate=150, seed=source * 100 + target).start()
        try:
            co.wait(name, timeout=90)
            assert_verified(co.verify(name))
            steps = []
            for kind, switch in (("cutover", cutover), ("rollback", rollback), ("cutover", cutover)):
                if kind == "cutover" and steps:  # a cutover after a rollback wants a verification after it
                    co.wait(name, timeout=90)
                    assert_verified(co.verify(name))
                result = switch(env.config, co.store, name, SwitchOptions())
                assert result.outcome == Outcome.DONE, f"{kind}: {result.message}"
                if not steps:  # the forward slot on the source, the reverse slots on the targets
                    for cluster, major in zip(CLUSTERS, (source, target, target), strict=True):
                        flags = _failover_slots(env, cluster)
                        assert flags == (None if major < 17 else [True]), (cluster, flags)
                steps.append((kind, round(result.pause_ms)))
                time.sleep(1.5)  # the load writes on the new owners, and flows back through the reverse streams
        finally:
            stats = load.stop()
        co.wait(name, timeout=90)
        assert_verified(co.verify(name))
    assert stats.rejected == 0 and not stats.failed, stats
    assert assert_acked_on_owners(env, load.acked, co) > 200
    done = co.complete(name, keep_source_data=False)
    assert done.deleted_rows > 1_000
    assert co.store.migration(name).state == State.COMPLETE
    for k in moving_keys(5):
        assert acceptors(env, k) == [co.store.active()[1].owner("public.accounts", [k])]
    print(f"PostgreSQL {source} -> {target}: write pauses {steps}")
