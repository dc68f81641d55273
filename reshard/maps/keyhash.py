"""The one key function: PostgreSQL's hash-partitioning hash, in Python and in SQL.

A hash shard map puts a key into bucket ``partition_hash(key) mod N``, where
``partition_hash`` is exactly what ``PARTITION BY HASH`` computes: each key column is
hashed with its type's extended hash function seeded with ``HASH_PARTITION_SEED``,
and the column hashes are folded with ``hash_combine64`` (src/backend/partitioning,
src/common/hashfn.c). So a reshard hash map agrees, bucket for bucket, with native
hash partitions of the same modulus and with other tools that use them, and the
same predicate can run inside ``COPY (SELECT … WHERE …)``, a trigger, and the router.

The Python side reimplements Bob Jenkins' lookup3 as PostgreSQL uses it (little-
endian word reads); ``_keyhash.c`` compiles the same two functions, and the Python ones
are the reference it is tested against (and what runs when it was not built).
tests/e2e/test_keyhash_live.py checks the hash against a live server with
``satisfies_hash_partition`` on 100,000+ random keys per key type.
"""

from __future__ import annotations

import functools
import uuid as _uuid
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import sql

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
PARTITION_SEED = 0x7A5B22367996DCFD  # HASH_PARTITION_SEED, src/include/catalog/partition.h
COMBINE = 0x49A0F4DD15E5A8E3  # the constant in hash_combine64, src/include/common/hashfn.h
SEED_SQL = str(PARTITION_SEED)  # < 2**63, so a plain bigint literal
TWO64 = 1 << 64

# key type (as reshard names it) -> (accepted PostgreSQL type names, SQL hash function)
KEY_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "smallint": (("smallint", "int2"), "hashint2extended"),
    "integer": (("integer", "int", "int4"), "hashint4extended"),
    "bigint": (("bigint", "int8"), "hashint8extended"),
    "text": (("text", "character varying", "varchar"), "hashtextextended"),
    "uuid": (("uuid",), "uuid_hash_extended"),
}


def normalize_type(pg_type: str) -> str:
    """Map a PostgreSQL type name (as format_type prints it) to a reshard key type."""
    t = pg_type.strip().lower()
    if t.startswith("character varying") or t.startswith("varchar"):
        t = "text"
    for name, (aliases, _fn) in KEY_TYPES.items():
        if t == name or t in aliases:
            return name
    raise ValueError(f"unsupported shard key type {pg_type!r}; supported: {', '.join(KEY_TYPES)}")


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & M32; a ^= _rot(c, 4); c = (c + b) & M32
    b = (b - a) & M32; b ^= _rot(a, 6); a = (a + c) & M32
    c = (c - b) & M32; c ^= _rot(b, 8); b = (b + a) & M32
    a = (a - c) & M32; a ^= _rot(c, 16); c = (c + b) & M32
    b = (b - a) & M32; b ^= _rot(a, 19); a = (a + c) & M32
    c = (c - b) & M32; c ^= _rot(b, 4); b = (b + a) & M32
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    # the rotations are written out: this runs once per routed change event
    c ^= b; c = (c - (((b << 14) | (b >> 18)) & M32)) & M32
    a ^= c; a = (a - (((c << 11) | (c >> 21)) & M32)) & M32
    b ^= a; b = (b - (((a << 25) | (a >> 7)) & M32)) & M32
    c ^= b; c = (c - (((b << 16) | (b >> 16)) & M32)) & M32
    a ^= c; a = (a - (((c << 4) | (c >> 28)) & M32)) & M32
    b ^= a; b = (b - (((a << 14) | (a >> 18)) & M32)) & M32
    c ^= b; c = (c - (((b << 24) | (b >> 8)) & M32)) & M32
    return a, b, c


def _seeded(init: int, seed: int) -> tuple[int, int, int]:
    a = b = c = init & M32
    if seed:
        # the seed is hashed as a 12-byte chunk: high half, low half, four zero bytes
        a = (a + (seed >> 32)) & M32
        b = (b + (seed & M32)) & M32
        a, b, c = _mix(a, b, c)
    return a, b, c


def py_hash_bytes_extended(data: bytes, seed: int) -> int:
    """hash_bytes_extended(): 64-bit lookup3 of a byte string (unsigned result)."""
    n = len(data)
    a, b, c = _seeded(0x9E3779B9 + n + 3923095, seed)
    i = 0
    while n - i >= 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & M32
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & M32
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & M32
        a, b, c = _mix(a, b, c)
        i += 12
    rest = data[i:]
    # the tail: bytes 0-3 into a, 4-7 into b, 8-10 into c above its low byte
    # (the lowest byte of c is reserved for the length in lookup3)
    a = (a + int.from_bytes(rest[0:4], "little")) & M32
    b = (b + int.from_bytes(rest[4:8], "little")) & M32
    c = (c + (int.from_bytes(rest[8:11], "little") << 8)) & M32
    a, b, c = _final(a, b, c)
    return (b << 32) | c


@functools.lru_cache(maxsize=8)
def _seeded_uint32(seed: int) -> tuple[int, int, int]:
    """The lookup3 state of a 4-byte key after seeding: the same for every key."""
    return _seeded(0x9E3779B9 + 4 + 3923095, seed)


def py_hash_uint32_extended(k: int, seed: int) -> int:
    """hash_uint32_extended(): 64-bit lookup3 of a 4-byte key (unsigned result)."""
    a, b, c = _seeded_uint32(seed)
    a = (a + (k & M32)) & M32
    a, b, c = _final(a, b, c)
    return (b << 32) | c


try:  # the same two functions compiled (_keyhash.c): a route hashes every change event's key
    from reshard.maps._keyhash import hash_bytes_extended, hash_uint32_extended
except ImportError:  # built without a C compiler
    hash_bytes_extended, hash_uint32_extended = py_hash_bytes_extended, py_hash_uint32_extended


def hashint8extended(v: int, seed: int) -> int:
    if not -(1 << 63) <= v < (1 << 63):
        raise ValueError(f"{v} does not fit a bigint")
    lo = v & M32
    hi = (v >> 32) & M32
    lo ^= hi if v >= 0 else (~hi & M32)
    return hash_uint32_extended(lo, seed)


def hashint4extended(v: int, seed: int) -> int:
    if not -(1 << 31) <= v < (1 << 31):
        raise ValueError(f"{v} does not fit an integer")
    return hash_uint32_extended(v & M32, seed)


def hashint2extended(v: int, seed: int) -> int:
    if not -(1 << 15) <= v < (1 << 15):
        raise ValueError(f"{v} does not fit a smallint")
    return hash_uint32_extended(v & M32, seed)


def hashtextextended(s: str, seed: int) -> int:
    # deterministic collations hash the bytes as stored (UTF-8 databases)
    return hash_bytes_extended(s.encode("utf-8"), seed)


def uuid_hash_extended(u: _uuid.UUID | str, seed: int) -> int:
    if not isinstance(u, _uuid.UUID):
        u = _uuid.UUID(str(u))
    return hash_bytes_extended(u.bytes, seed)


_PY_FUNCS = {
    "smallint": lambda v, s: hashint2extended(int(v), s),
    "integer": lambda v, s: hashint4extended(int(v), s),
    "bigint": lambda v, s: hashint8extended(int(v), s),
    "text": lambda v, s: hashtextextended(str(v), s),
    "uuid": uuid_hash_extended,
}


def column_hash(key_type: str) -> Callable[[Any], int]:
    """The seeded hash of one column's value of ``key_type`` (what partition_hash folds)."""
    fn = _PY_FUNCS[key_type]
    return lambda v: fn(v, PARTITION_SEED)


def hash_combine64(a: int, b: int) -> int:
    a ^= (b + COMBINE + ((a << 54) & M64) + (a >> 7)) & M64
    return a & M64


def partition_hash(values: Sequence[object], types: Sequence[str]) -> int:
    """compute_partition_hash_value(): the row hash of a (possibly composite) key."""
    row = 0
    for v, t in zip(values, types, strict=True):
        if v is None:
            continue  # NULL columns do not contribute, as in PostgreSQL
        row = hash_combine64(row, _PY_FUNCS[t](v, PARTITION_SEED))
    return row


def bucket(values: Sequence[object], types: Sequence[str], modulus: int) -> int:
    """The hash partition (bucket) a key falls in, 0 <= bucket < modulus."""
    return partition_hash(values, types) % modulus


# ---- SQL ---------------------------------------------------------------------

def sql_column_hash(column: sql.Composable, key_type: str) -> sql.Composable:
    """The seeded extended hash of one column, as a signed bigint SQL expression."""
    return sql.SQL("{}({}, {})").format(sql.SQL(KEY_TYPES[key_type][1]), column, sql.SQL(SEED_SQL))


def sql_bucket(columns: Sequence[sql.Composable], types: Sequence[str], modulus: int) -> sql.Composable:
    """A SQL expression equal to ``bucket()`` for the row's key columns.

    One column (the common case) needs no helper: the row hash is the column hash
    plus COMBINE modulo 2**64. With a power-of-two modulus that reduces to bit
    arithmetic on bigint (two's complement ``&`` is ``mod`` for powers of two), with
    any other modulus it goes through numeric. Composite keys fold the column hashes
    with ``reshard.hash_combine64``, a helper reshard installs on each shard.
    """
    if modulus < 1:
        raise ValueError("modulus must be >= 1")
    if len(columns) == 1:
        h = sql_column_hash(columns[0], types[0])
        if modulus & (modulus - 1) == 0:
            m = modulus - 1
            return sql.SQL(f"((({{}} & {m}) + {COMBINE & m}) & {m})::int").format(h)
        return sql.SQL(f"mod(mod(mod(({{}})::numeric + {COMBINE}, {TWO64}) + {TWO64}, {TWO64}), {modulus})::int").format(h)
    row: sql.Composable = sql.SQL("0::numeric")
    for col, t in zip(columns, types, strict=True):
        row = sql.SQL("reshard.hash_combine64({}, {})").format(row, sql_column_hash(col, t))
    return sql.SQL(f"mod({{}}, {modulus})::int").format(row)


# reshard.hash_combine64(a numeric (unsigned 64-bit), b bigint (a column hash)) -> numeric.
# Installed on shards by reshard.cluster.shard_schema; written with numeric arithmetic for the
# unsigned wrap-around and bigint '#' for the xor.
HASH_COMBINE64_SQL = f"""
CREATE OR REPLACE FUNCTION reshard.hash_combine64(a numeric, b bigint) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  WITH s AS (
    SELECT mod(mod(b::numeric + {TWO64}, {TWO64}) + {COMBINE}
               + mod(a * {1 << 54}, {TWO64}) + div(a, 128), {TWO64}) AS v
  ), signed AS (
    SELECT (CASE WHEN a >= {1 << 63} THEN a - {TWO64} ELSE a END)::bigint AS x,
           (CASE WHEN v >= {1 << 63} THEN v - {TWO64} ELSE v END)::bigint AS y FROM s
  )
  SELECT mod((x # y)::numeric + {TWO64}, {TWO64}) FROM signed
$$;
"""
