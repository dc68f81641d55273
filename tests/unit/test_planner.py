"""Moves between map versions: split, merge, N->M, tenant move, scheme change."""

import pytest

from reshard.errors import ConfigError
from reshard.maps.planner import plan
from reshard.maps.shardmap import parse_map

TABLES = {"accounts": "id", "orders": "account_id"}


def hmap(clusters, buckets=4096):
    return parse_map({"groups": {"acct": {"key": "bigint", "tables": TABLES,
                                          "hash": {"buckets": buckets, "clusters": clusters}}}})


def test_split_one_to_two():
    p = plan(hmap({"s": "0-4095"}), hmap({"t1": "0-2047", "t2": "2048-4095"}))
    assert [(m.source, m.target, m.summary) for m in p.moves] == [
        ("s", "t1", "buckets 0-2047 of 4096"), ("s", "t2", "buckets 2048-4095 of 4096")]
    assert p.tables() == ["public.accounts", "public.orders"]
    sql = p.predicate_sql(p.moves[0], "public.orders", "o").as_string(None)
    assert 'o."account_id"' in sql and "'{[0,2048)}'::int4multirange" in sql


def test_merge_and_partial_moves():
    p = plan(hmap({"a": "0-2047", "b": "2048-4095"}), hmap({"b": "0-4095"}))
    assert [(m.source, m.target) for m in p.moves] == [("a", "b")]
    p = plan(hmap({"a": "0-2047", "b": "2048-4095"}), hmap({"a": "0-1023", "b": "1024-4095"}))
    assert [(m.source, m.target, m.summary) for m in p.moves] == [("a", "b", "buckets 1024-2047 of 4096")]


def test_route_only_moving_keys_from_their_old_owner():
    p = plan(hmap({"a": "0-2047", "b": "2048-4095"}), hmap({"a": "0-1023", "c": "1024-2047", "b": "2048-4095"}))
    new = p.new
    for k in range(500):
        owner_old, owner_new = p.old.owner("public.accounts", [k]), new.owner("public.accounts", [k])
        expect = owner_new if owner_old == "a" and owner_new == "c" else None
        assert p.route("public.accounts", "a", [k]) == expect
        assert p.route("public.accounts", "b", [k]) is None


def test_tenant_move_and_scheme_change():
    d0 = parse_map({"groups": {"t": {"key": "text", "tables": {"orders": "tenant"},
                                     "directory": {"default": "a", "entries": {"acme": "a"}}}}})
    d1 = parse_map({"groups": {"t": {"key": "text", "tables": {"orders": "tenant"},
                                     "directory": {"default": "a", "entries": {"acme": "b"}}}}})
    p = plan(d0, d1)
    assert [(m.source, m.target) for m in p.moves] == [("a", "b")]
    assert "IN ('acme'::text)" in p.predicate_sql(p.moves[0], "public.orders").as_string(None)
    r = parse_map({"groups": {"acct": {"key": "bigint", "tables": TABLES, "range": [
        {"cluster": "a", "to": 1000}, {"cluster": "b", "from": 1000}]}}})
    p = plan(r, hmap({"a": "0-2047", "b": "2048-4095"}))
    assert {(m.source, m.target) for m in p.moves} == {("a", "b"), ("b", "a")}
    for k in range(0, 3000, 7):
        if p.old.owner("public.accounts", [k]) != p.new.owner("public.accounts", [k]):
            src = p.old.owner("public.accounts", [k])
            assert p.route("public.accounts", src, [k]) == p.new.owner("public.accounts", [k])


def test_nothing_moves_between_equal_maps():
    assert plan(hmap({"a": "0-4095"}), hmap({"a": "0-4095"})).moves == ()


def test_waves_refuse_bucket_ranges_past_the_map():
    import pytest

    from reshard.cutover.waves import parse_only
    from reshard.errors import ConfigError

    left = {"accounts": [1, 2, 3, 4000]}
    assert parse_only("0-2", left, {}, 4096) == {"accounts": [1, 2]}
    with pytest.raises(ConfigError, match="numbered 0-4095"):
        parse_only("0-99999", left, {}, 4096)


def test_overlap_between_migrations_is_exact_for_bucket_maps():
    from reshard.maps.planner import overlap

    def m(**clusters):
        return parse_map({"groups": {"accounts": {"key": "bigint", "tables": {"public.accounts": "id"},
                                                  "hash": {"buckets": 8, "clusters": clusters}}}})

    now = m(source1="0-7")
    first = plan(now, m(source1="0-3", target1="4-7"))
    assert overlap(first, plan(now, m(source1="0-5", target2="6-7"))) == "group accounts: both move buckets 6-7 of 8"
    assert overlap(first, plan(now, m(source1="4-7", target2="0-3"))) is None



def test_a_single_column_key_is_routed_to_the_bucket_partition_hash_gives():
    from reshard.maps.keyhash import bucket

    p = plan(hmap({"a": "0-7"}, buckets=8), hmap({"a": "0-3", "b": "4-7"}, buckets=8))
    for k in (-(2**63), -1, 0, 1, 12345, 2**63 - 1):
        want = "a" if bucket([k], ["bigint"], 8) < 4 else "b"
        assert p.owners("public.accounts", [k]) == ("a", want)
    with pytest.raises(ConfigError):
        p.owners("public.accounts", [1, 2])
    with pytest.raises(ConfigError):
        p.owners("public.accounts", ["not a number"])
