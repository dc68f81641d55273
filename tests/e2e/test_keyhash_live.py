"""The one key function, against a live PostgreSQL: 100,000 random keys per key type.

For each key the Python bucket must satisfy PostgreSQL's own hash-partition check
(``satisfies_hash_partition``, what ``PARTITION BY HASH`` routes by) and equal the
SQL bucket expression reshard uses in COPY predicates and the fence trigger.
"""

import random
import string
import uuid

import pytest
from psycopg import sql

from reshard.cluster import shard_schema
from reshard.maps import keyhash

N = 100_000
ALPHABET = string.ascii_letters + string.digits + " -_é€😀ßø"


def random_key(rng: random.Random, key_type: str):
    if key_type == "bigint":
        return rng.choice([rng.randint(-2**63, 2**63 - 1), rng.randint(-10**6, 10**6)])
    if key_type == "integer":
        return rng.randint(-2**31, 2**31 - 1)
    if key_type == "smallint":
        return rng.randint(-2**15, 2**15 - 1)
    if key_type == "text":
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
    return uuid.UUID(int=rng.getrandbits(128))


@pytest.mark.parametrize("modulus", [4096, 10])
@pytest.mark.parametrize("key_type", ["bigint", "integer", "smallint", "text", "uuid"])
def test_python_sql_and_native_partitions_agree(env, key_type, modulus):
    rng = random.Random(f"{key_type}-{modulus}")
    keys = [random_key(rng, key_type) for _ in range(N)]
    with env.conn("source1") as conn:
        conn.execute(f"CREATE TABLE hp (k {key_type}) PARTITION BY HASH (k)")
        conn.execute(f"CREATE TEMP TABLE probe (k {key_type}, b int)")
        with conn.cursor().copy("COPY probe (k, b) FROM STDIN") as cp:
            for k in keys:
                cp.write_row((k, keyhash.bucket([k], [key_type], modulus)))
        bad_native, bad_sql = conn.execute(
            f"SELECT count(*) FILTER (WHERE NOT satisfies_hash_partition('hp'::regclass, {modulus}, b, k)), "
            f"count(*) FILTER (WHERE {keyhash.sql_bucket([sql.Identifier('k')], [key_type], modulus).as_string(conn)} <> b) FROM probe"
        ).fetchone()
    assert (bad_native, bad_sql) == (0, 0)


def test_composite_keys_agree(env):
    rng = random.Random("composite")
    keys = [(random_key(rng, "bigint"), random_key(rng, "text")) for _ in range(20_000)]
    with env.conn("source1") as conn:
        shard_schema.install(conn)
        conn.execute("CREATE TABLE hp2 (a bigint, b text) PARTITION BY HASH (a, b)")
        conn.execute("CREATE TEMP TABLE probe2 (a bigint, t text, b int)")
        with conn.cursor().copy("COPY probe2 (a, t, b) FROM STDIN") as cp:
            for a, t in keys:
                cp.write_row((a, t, keyhash.bucket([a, t], ["bigint", "text"], 4096)))
        bucket = keyhash.sql_bucket([sql.Identifier("a"), sql.Identifier("t")], ["bigint", "text"], 4096)
        bad = conn.execute(sql.SQL(
            "SELECT count(*) FILTER (WHERE NOT satisfies_hash_partition('hp2'::regclass, 4096, b, a, t)), "
            "count(*) FILTER (WHERE {} <> b) FROM probe2").format(bucket)).fetchone()
    assert bad == (0, 0)
