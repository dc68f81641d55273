"""A moving table the targets do not have is created from the source's definition: the
table, its defaults, CHECK constraints and sequence before the copy with its primary key,
secondary indexes after it; abort drops what it created."""

import psycopg

from reshard.coordinator import Coordinator
from reshard.maps.shardmap import parse_map
from tests.e2e.helpers import ApplierThread

DDL = """
CREATE TABLE public.orders (
    id      bigserial PRIMARY KEY,
    account bigint NOT NULL,
    amount  numeric(12,2) NOT NULL DEFAULT 0 CHECK (amount >= 0),
    note    text,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_account ON public.orders (account);
CREATE UNIQUE INDEX orders_note ON public.orders (note) WHERE note IS NOT NULL;
"""
GROUP = {"key": "bigint", "tables": {"public.orders": "id"}}
BEFORE = {"groups": {"orders": {**GROUP, "hash": {"buckets": 64, "clusters": {"source1": "0-63"}}}}}
AFTER = {"groups": {"orders": {**GROUP, "hash": {"buckets": 64, "clusters": {"target1": "0-31", "target2": "32-63"}}}}}


def _shape(conn: psycopg.Connection) -> dict:
    q = lambda s: sorted(r[0] for r in conn.execute(s).fetchall())  # noqa: E731
    return {
        "indexes": q("SELECT indexdef FROM pg_indexes WHERE tablename = 'orders'"),
        "checks": q("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'public.orders'::regclass "
                    "AND contype = 'c'"),
        "defaults": q("SELECT column_name || ' ' || column_default FROM information_schema.columns "
                      "WHERE table_name = 'orders' AND column_default IS NOT NULL"),
    }


def test_a_table_the_targets_lack_is_created_copied_and_dropped_on_abort(env):
    with env.conn("source1") as conn:
        conn.execute(DDL)
        conn.execute("INSERT INTO public.orders (account, amount, note) "
                     "SELECT g % 97, g, CASE WHEN g % 5 = 0 THEN 'n' || g END FROM generate_series(1, 4000) g")
        source_shape = _shape(conn)
    name = env.migration()
    co = Coordinator.open(env.config)
    co.create(name, parse_map(AFTER, env.config.clusters), parse_map(BEFORE, env.config.clusters))
    report = co.start(name)
    assert sorted(report.tables_created) == ["target1:public.orders", "target2:public.orders"]
    assert report.statements_skipped == []
    for target in ("target1", "target2"):
        with env.conn(target) as conn:
            assert _shape(conn) == source_shape, target  # primary key, both indexes, CHECK, defaults, sequence
            assert conn.execute("SELECT nextval('public.orders_id_seq')").fetchone()[0] >= 1  # the owned sequence
    with env.conn("source1") as conn:
        conn.execute("UPDATE public.orders SET amount = amount + 1 WHERE id <= 100")
    with ApplierThread(co, name):
        co.wait(name, timeout=120)
    assert co.verify(name).equal
    done = co.teardown(name)
    assert any("dropped public.orders on target1" in d for d in done), done
    for target in ("target1", "target2"):
        with env.conn(target) as conn:
            assert conn.execute("SELECT to_regclass('public.orders')").fetchone()[0] is None
