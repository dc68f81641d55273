"""The control store's unit of work, on a real control database: what runs in one unit
commits together or not at all, its audit rows included, and a pinned store's unit is
its connection's transaction."""

import psycopg
import pytest

from reshard.control.store import ControlStore
from reshard.maps.shardmap import parse_map


def _map(env, split: bool):
    names = sorted(env.config.clusters)
    clusters = {names[0]: "0-4095"} if not split else {names[1]: "0-2047", names[2]: "2048-4095"}
    return parse_map({"name": "accounts", "groups": {"g": {"key": "bigint", "tables": {"public.accounts": "id"},
                                                           "hash": {"buckets": 4096, "clusters": clusters}}}},
                     env.config.clusters)


def _audit(env, event: str) -> int:
    with psycopg.connect(env.config.control_dsn) as conn:
        return conn.execute("SELECT count(*) FROM reshard.audit_log WHERE event = %s", (event,)).fetchone()[0]


@pytest.mark.e2e
@pytest.mark.parametrize("pinned", [False, True], ids=["own", "pinned"])
def test_a_unit_of_work_commits_together_or_not_at_all(env, pinned):
    store = ControlStore(env.config.control_dsn)
    first, _ = store.register_map(_map(env, split=False))
    second, _ = store.register_map(_map(env, split=True))
    store.activate(first)

    def run(s: ControlStore) -> None:
        with pytest.raises(RuntimeError), s.unit() as uow:
            uow.activate(second)
            uow.record_event(None, "test.inside")
            assert uow.active_epoch() == second  # the unit sees its own writes
            raise RuntimeError("the unit fails after its writes")
        assert s.active_epoch() == first and _audit(env, "test.inside") == 0  # all rolled back
        with s.unit() as uow:
            uow.activate(second)
            uow.record_event(None, "test.inside")
            with psycopg.connect(env.config.control_dsn) as other:  # nothing is visible before the end
                assert other.execute("SELECT epoch FROM reshard.active_map").fetchone()[0] == first
        assert s.active_epoch() == second and _audit(env, "test.inside") == 1

    if pinned:
        with store.pinned() as p:
            run(p)
            p.activate(first)  # the pinned connection still commits calls outside a unit
        assert store.active_epoch() == first
    else:
        run(store)
