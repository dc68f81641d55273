"""The continuous checker's chunk walk on a real server, with a composite key whose first
column is text: consecutive chunks of the source partition the rows exactly (no row in
two chunks, none skipped, in the same order the bounds compare in), and each chunk's
count and checksum equal the summary of the same key range read the way the target's
side is read."""

import psycopg
from psycopg import sql

from reshard.cluster.catalog import require_table
from reshard.proof.continuous_check import source_chunk, within
from reshard.proof.verify import SESSION, summary

TABLE = "public.check_chunks"


def test_chunks_partition_a_composite_text_key_and_match_the_range_summary(env):
    with psycopg.connect(env.dsn("source1"), autocommit=True) as conn:
        conn.execute(SESSION)
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (tenant text, n int, amount numeric, note text, PRIMARY KEY (tenant, n))")
        # tenants whose order depends on the collation ('B' and 'a'), and 1,003 rows: the last chunk is short
        conn.execute(f"INSERT INTO {TABLE} SELECT t, n, n * 1.5, CASE WHEN n % 7 = 0 THEN NULL ELSE 'x' || n END "
                     "FROM unnest(ARRAY['a', 'B', 'c d', 'Z']) t, generate_series(1, 250) n")
        conn.execute(f"INSERT INTO {TABLE} VALUES ('zz', 1, 1, 'q'), ('zz', 2, 2, 'r'), ('é', 1, 3, NULL)")
        try:
            info = require_table(conn, TABLE, "source1")
            columns = [c.name for c in info.copyable]
            predicate = sql.SQL("t.amount >= 0")
            lower, seen, chunks = None, 0, 0
            keys: list[tuple] = []
            while True:
                chunk = source_chunk(conn, TABLE, info, columns, predicate, lower, 100)
                upper = chunk.last if chunk.rows >= 100 else None
                cond = within(info, lower, upper)
                assert summary(conn, TABLE, columns, sql.SQL("{} AND {}").format(predicate, cond)) == (chunk.rows, chunk.checksum)
                keys += conn.execute(sql.SQL("SELECT tenant, n FROM {} t WHERE {} AND {}").format(
                    sql.SQL(TABLE), predicate, cond)).fetchall()
                seen += chunk.rows
                chunks += 1
                if upper is None:
                    break
                lower = upper
            assert seen == 1003 and chunks == 11
            assert len(keys) == len(set(keys)) == 1003
            whole = source_chunk(conn, TABLE, info, columns, predicate, None, 5000)
            assert (whole.rows, whole.checksum) == summary(conn, TABLE, columns, predicate)
            greatest = conn.execute(f"SELECT tenant, n FROM {TABLE} ORDER BY tenant DESC, n DESC LIMIT 1").fetchone()
            assert whole.last == tuple(greatest)
            assert source_chunk(conn, TABLE, info, columns, predicate, whole.last, 100) == (
                type(whole)(0, "0", None))
        finally:
            conn.execute(f"DROP TABLE {TABLE}")
