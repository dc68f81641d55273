"""The Python key function against values PostgreSQL 15 itself returned.

The 100,000-keys-per-type property test against a live server is in
tests/e2e/test_keyhash_live.py; these vectors pin the algorithm offline.
"""

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from reshard.maps import keyhash as kh

S = kh.PARTITION_SEED
U = kh.M64

# (function, argument, seed, what `SELECT f(arg, seed)` returned, as unsigned)
VECTORS = [
    (kh.hashint8extended, 0, S, -4403592609991167795 & U),
    (kh.hashint8extended, -1, S, -5017072347659237694 & U),
    (kh.hashint8extended, 9223372036854775807, S, 4938542303000433043),
    (kh.hashint8extended, 42, 0, 8010225493015854792),
    (kh.hashint4extended, 7, S, 1708571371176205364),
    (kh.hashtextextended, "", S, -5700645584453517373 & U),
    (kh.hashtextextended, "hello", S, -2635279551741001039 & U),
    (kh.hashtextextended, "a longer text value, more than twelve bytes é", S, -6044595607118637335 & U),
    (kh.uuid_hash_extended, uuid.UUID(int=1), S, 5260903147514422602),
]


@pytest.mark.parametrize("fn,arg,seed,expected", VECTORS)
def test_matches_postgres(fn, arg, seed, expected):
    assert fn(arg, seed) == expected


def test_int_widths_agree_for_small_values():
    # PostgreSQL makes int2/int4/int8 hash alike for equal values (cross-type hash joins)
    for v in (-5, 0, 1, 12345, -32768):
        assert kh.hashint2extended(v, S) == kh.hashint4extended(v, S) == kh.hashint8extended(v, S)


def test_out_of_range_is_refused():
    with pytest.raises(ValueError):
        kh.hashint4extended(2**31, S)
    with pytest.raises(ValueError):
        kh.hashint8extended(2**63, S)


def test_bucket_is_within_modulus_and_nulls_do_not_contribute():
    for v in range(-100, 100):
        assert 0 <= kh.bucket([v], ["bigint"], 4096) < 4096
        assert 0 <= kh.bucket([v], ["bigint"], 7) < 7
    assert kh.partition_hash([None, 5], ["bigint", "bigint"]) == kh.partition_hash([5], ["bigint"])


def test_composite_is_a_fold_of_column_hashes():
    h1, h2 = kh.hashint8extended(1, S), kh.hashtextextended("x", S)
    assert kh.partition_hash([1, "x"], ["bigint", "text"]) == kh.hash_combine64(kh.hash_combine64(0, h1), h2)


def test_sql_expressions_avoid_percent_placeholders():
    for mod in (4096, 7):
        assert "%" not in kh.sql_bucket([sql.Identifier("k")], ["bigint"], mod).as_string(None)
    assert "%" not in kh.sql_bucket([sql.Identifier("a"), sql.Identifier("b")], ["bigint", "text"], 10).as_string(None)
    assert "%" not in kh.HASH_COMBINE64_SQL


def test_normalize_type():
    assert kh.normalize_type("character varying(20)") == "text"
    assert kh.normalize_type("int8") == "bigint"
    with pytest.raises(ValueError, match="unsupported shard key type"):
        kh.normalize_type("double precision")


@pytest.mark.skipif(kh.hash_bytes_extended is kh.py_hash_bytes_extended, reason="_keyhash was not built")
@given(st.binary(max_size=64), st.integers(0, U))
def test_the_compiled_hash_of_bytes_is_the_python_one(data, seed):
    assert kh.hash_bytes_extended(data, seed) == kh.py_hash_bytes_extended(data, seed)


@pytest.mark.skipif(kh.hash_uint32_extended is kh.py_hash_uint32_extended, reason="_keyhash was not built")
@given(st.integers(0, kh.M32), st.sampled_from([0, S, U, 1]))
def test_the_compiled_hash_of_a_word_is_the_python_one(k, seed):
    assert kh.hash_uint32_extended(k, seed) == kh.py_hash_uint32_extended(k, seed)
