"""Map parsing, validation messages, ownership and SQL rendering of each scheme."""

import uuid

import pytest

from reshard.errors import ConfigError
from reshard.maps.shardmap import parse_map


def hash_map(clusters, buckets=4096, tables=None, key="bigint"):
    return {"groups": {"g": {"key": key, "tables": tables or {"accounts": "id"},
                             "hash": {"buckets": buckets, "clusters": clusters}}}}


def test_hash_owner_and_table_names_default_to_public():
    m = parse_map(hash_map({"a": "0-2047", "b": "2048-4095"}))
    assert m.tables() == ["public.accounts"]
    owners = {m.owner("public.accounts", [k]) for k in range(200)}
    assert owners == {"a", "b"}


@pytest.mark.parametrize("spec,message", [
    ({"a": "0-2047", "b": "2047-4095"}, "bucket 2047 is assigned to both a and b (overlap)"),
    ({"a": "0-2046", "b": "2048-4095"}, "1 of 4096 buckets are unassigned (first: 2047)"),
    ({"a": "0-5000"}, "outside 0-4095"),
    ({"a": "x-y"}, "must look like"),
])
def test_hash_validation_names_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_map(hash_map(spec))


def test_unknown_cluster_is_refused():
    with pytest.raises(ConfigError, match="unknown cluster.*c"):
        parse_map(hash_map({"a": "0-2047", "c": "2048-4095"}), known_clusters={"a", "b"})


@pytest.mark.parametrize("ranges,message", [
    ([{"cluster": "a", "to": 10}, {"cluster": "b", "from": 20}], r"keys in \[10, 20\) have no owner"),
    ([{"cluster": "a", "to": 30}, {"cluster": "b", "from": 20}], "overlap at 20"),
    ([{"cluster": "a", "from": 0, "to": 10}, {"cluster": "b", "from": 10}], "keys below 0 have no owner"),
    ([{"cluster": "a", "to": 10}, {"cluster": "b", "from": 10, "to": 20}], "keys from 20 up have no owner"),
    ([{"cluster": "a", "to": 10}, {"cluster": "b", "from": 15, "to": 12}, {"cluster": "c", "from": 12}], "is empty"),
])
def test_range_validation_names_gaps_and_overlaps(ranges, message):
    with pytest.raises(ConfigError, match=message):
        parse_map({"groups": {"g": {"key": "bigint", "tables": {"t": "k"}, "range": ranges}}})


def test_range_owner_is_half_open():
    m = parse_map({"groups": {"g": {"key": "bigint", "tables": {"t": "k"}, "range": [
        {"cluster": "a", "to": 100}, {"cluster": "b", "from": 100, "to": 200}, {"cluster": "c", "from": 200}]}}})
    assert [m.owner("public.t", [k]) for k in (-(2**63), 99, 100, 199, 200, 2**62)] == ["a", "a", "b", "b", "c", "c"]
    sql = m.groups["g"].predicate_sql("public.t", "b").as_string(None)
    assert sql == '("k" >= 100::bigint AND "k" < 200::bigint)'


def test_text_ranges_compare_in_c_collation():
    m = parse_map({"groups": {"g": {"key": "text", "tables": {"t": "k"}, "range": [
        {"cluster": "a", "to": "m"}, {"cluster": "b", "from": "m"}]}}})
    assert m.owner("public.t", ["Zebra"]) == "a"  # 'Z' < 'm' in byte order
    assert 'COLLATE "C"' in m.groups["g"].predicate_sql("public.t", "a").as_string(None)


def test_directory_with_default_and_quoting():
    m = parse_map({"groups": {"tenants": {"key": "text", "tables": {"orders": "tenant_id"}, "directory": {
        "default": "a", "entries": {"acme": "b", "o'brien": "b"}}}}})
    assert m.owner("public.orders", ["acme"]) == "b"
    assert m.owner("public.orders", ["anyone"]) == "a"
    assert "'o''brien'" in m.groups["tenants"].predicate_sql("public.orders", "b").as_string(None)
    with pytest.raises(ConfigError, match="groups.t.directory: missing required key 'default'"):
        parse_map({"groups": {"t": {"key": "text", "tables": {"o": "k"}, "directory": {"entries": {}}}}})


def test_uuid_keys_and_composite_group_tables():
    m = parse_map({"groups": {"g": {"key": "uuid", "tables": {"users": "id", "events": "user_id"},
                                    "hash": {"buckets": 16, "modulo": [f"c{i}" for i in range(16)]}}}})
    u = uuid.uuid4()
    assert m.owner("public.users", [u]) == m.owner("public.events", [str(u)])
    with pytest.raises(ConfigError, match="not a valid uuid"):
        m.owner("public.users", ["nope"])


def test_table_in_two_groups_and_key_arity():
    with pytest.raises(ConfigError, match="already in group"):
        parse_map({"groups": {
            "a": {"key": "bigint", "tables": {"t": "k"}, "hash": {"modulo": ["x"]}},
            "b": {"key": "bigint", "tables": {"t": "k"}, "hash": {"modulo": ["x"]}}}})
    with pytest.raises(ConfigError, match="names 2 shard key column"):
        parse_map({"groups": {"a": {"key": "bigint", "tables": {"t": ["a", "b"]}, "hash": {"modulo": ["x"]}}}})


def test_ring_spreads_buckets_and_roundtrips():
    m = parse_map({"groups": {"g": {"key": "bigint", "tables": {"t": "k"}, "hash": {"ring": {"clusters": ["a", "b", "c", "d"]}}}}})
    counts = {c: m.groups["g"].scheme.assignment.count(c) for c in "abcd"}
    assert all(600 < n < 1500 for n in counts.values()), counts
    again = parse_map(m.to_dict())
    assert again.groups["g"].scheme.assignment == m.groups["g"].scheme.assignment
    assert again.digest() == m.digest()


@pytest.mark.parametrize("group,message", [
    # a typo was silently ignored and 4096 buckets used
    ({"key": "bigint", "tables": {"t": "k"}, "hash": {"buckts": 1024, "modulo": ["a"]}},
     r"groups.g.hash.buckts: unknown key \(did you mean 'buckets'\?\)"),
    # a missing key quietly meant bigint
    ({"tables": {"t": "k"}, "hash": {"modulo": ["a"]}}, "groups.g: missing required key 'key'"),
    # a non-numeric bucket count crashed with a traceback
    ({"key": "bigint", "tables": {"t": "k"}, "hash": {"buckets": "many", "modulo": ["a"]}},
     "groups.g.hash.buckets: Input should be a valid integer"),
    ({"key": "bigint", "tables": {"t": "k"}, "hash": {"modulo": ["a"]}, "range": [{"cluster": "a"}]},
     "groups.g: needs exactly one scheme of hash, range, directory, got hash, range"),
    ({"key": "bigint", "tables": {"t": "k"}, "hash": {"buckets": 8}},
     "groups.g.hash: needs exactly one assignment of clusters, modulo, ring, got none"),
    ({"key": "bigint", "tables": {"t": "k"}, "range": [{"cluster": "a", "form": 3}]},
     r"groups.g.range\[0\].form: unknown key \(did you mean 'from'\?\)"),
])
def test_map_file_errors_name_the_path_and_what_was_expected(group, message):
    with pytest.raises(ConfigError, match=f"^maps/after.yaml: {message}"):
        parse_map({"groups": {"g": group}}, where="maps/after.yaml")
