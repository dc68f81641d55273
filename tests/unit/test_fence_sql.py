"""The fence trigger's generated SQL (its behaviour is tested on a live server in e2e)."""

from reshard.cluster import fence
from reshard.maps.planner import plan
from reshard.maps.shardmap import parse_map


def maps():
    g = {"key": "bigint", "tables": {"accounts": "id"}}
    old = parse_map({"groups": {"a": {**g, "hash": {"buckets": 4096, "clusters": {"s1": "0-4095"}}}}})
    new = parse_map({"groups": {"a": {**g, "hash": {"buckets": 4096, "clusters": {"s1": "0-2047", "s2": "2048-4095"}}}}})
    return old, new


def test_steady_fence_checks_both_row_images_with_distinct_sqlstates():
    _, new = maps()
    sql = fence.trigger_function_sql(fence.steady("s2", 7, new), "public.accounts").as_string(None)
    assert "ERRCODE = 'RS002'" in sql and "ERRCODE = 'RS001'" not in sql  # nothing is fenced
    assert 'NEW."id" IS DISTINCT FROM OLD."id"' in sql
    assert 'NEW."id"' in sql and 'OLD."id"' in sql
    assert "at epoch 7, not to s2" in sql
    assert "current_setting('reshard.writer', true) = 'applier'" in sql
    assert "'{[2048,4096)}'::int4multirange" in sql


def test_switching_fences_what_a_cluster_loses():
    old, new = maps()
    spec = fence.switching("s1", 2, old, new)
    fenced = spec.fenced("public.accounts", "NEW").as_string(None)
    assert "AND NOT" in fenced and "'{[0,2048)}'" in fenced
    assert spec.mode == "switching"
    assert "ERRCODE = 'RS001'" in fence.trigger_function_sql(spec, "public.accounts").as_string(None)


def test_moving_fence_covers_only_moves_out_of_the_cluster():
    old, new = maps()
    p = plan(old, new)
    spec = fence.moving("s1", 1, old, p, list(p.moves), note="wave 1")
    assert "[2048,4096)" in spec.fenced("public.accounts", "NEW").as_string(None)
    assert fence.moving("s2", 1, old, p, list(p.moves)).fenced("public.accounts", "NEW").as_string(None) == "false"


def test_function_names_are_bounded():
    assert len(fence.function_name("s" * 40 + "." + "t" * 40)) <= 55
