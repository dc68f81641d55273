"""Estimate arithmetic: the share of keys a move carries, without a database."""

from pathlib import Path

import pytest

from reshard.maps.estimate import hash_fraction
from reshard.maps.planner import plan
from reshard.maps.shardmap import load_map, parse_map

MAPS = Path(__file__).resolve().parents[2] / "examples" / "maps"


def overall_share(old, new):
    """Fraction of all keys that move, with each old shard holding an equal share."""
    p = plan(old, new)
    owners = sorted(old.groups["accounts"].scheme.clusters())
    total = 0.0
    for m in p.moves:
        total += hash_fraction(old.groups[m.group].scheme, new.groups[m.group].scheme, m.source, m.target) / len(owners)
    return total


def test_a_fifth_shard_on_buckets_moves_a_fifth_and_on_modulo_four_fifths():
    buckets = overall_share(load_map(MAPS / "four-shards.yaml"), load_map(MAPS / "five-shards.yaml"))
    modulo = overall_share(load_map(MAPS / "modulo-4.yaml"), load_map(MAPS / "modulo-5.yaml"))
    assert buckets == pytest.approx(820 / 4096)
    assert modulo == pytest.approx(0.8)


def test_fraction_is_relative_to_the_source_share():
    old = parse_map({"groups": {"g": {"key": "bigint", "tables": {"t": "k"}, "hash": {"buckets": 8, "clusters": {"a": "0-1", "b": "2-7"}}}}})
    new = parse_map({"groups": {"g": {"key": "bigint", "tables": {"t": "k"}, "hash": {"buckets": 8, "clusters": {"a": "0", "c": "1", "b": "2-7"}}}}})
    # a owns 2 buckets and gives 1 of them to c: half of a's rows move
    assert hash_fraction(old.groups["g"].scheme, new.groups["g"].scheme, "a", "c") == 0.5


def test_sampling_agrees_with_exact_counting():
    from reshard.maps import estimate

    old = parse_map({"groups": {"g": {"key": "bigint", "tables": {"t": "k"}, "hash": {"modulo": ["a", "b", "c"]}}}}).groups["g"].scheme
    new = parse_map({"groups": {"g": {"key": "bigint", "tables": {"t": "k"}, "hash": {"modulo": ["a", "b", "c", "d", "e", "f", "g"]}}}}
                    ).groups["g"].scheme
    exact = hash_fraction(old, new, "a", "d")
    saved = estimate.EXACT_LCM_LIMIT
    estimate.EXACT_LCM_LIMIT = 1
    try:
        sampled = hash_fraction(old, new, "a", "d")
    finally:
        estimate.EXACT_LCM_LIMIT = saved
    assert sampled == pytest.approx(exact, abs=0.01)


def test_range_to_hash_uses_the_new_bucket_share_and_range_targets_ask_the_server():
    r = parse_map({"groups": {"g": {"key": "bigint", "tables": {"t": "k"}, "range": [{"cluster": "a", "to": 10}, {"cluster": "b", "from": 10}]}}})
    h = parse_map({"groups": {"g": {"key": "bigint", "tables": {"t": "k"}, "hash": {"buckets": 4, "modulo": ["a", "b", "b", "b"]}}}})
    assert hash_fraction(r.groups["g"].scheme, h.groups["g"].scheme, "a", "b") == 0.75
    assert hash_fraction(h.groups["g"].scheme, r.groups["g"].scheme, "a", "b") is None
