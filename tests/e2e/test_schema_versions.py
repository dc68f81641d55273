"""reshard's own schemas are versioned: an old database is upgraded in place, keeping its
rows; a database a newer reshard upgraded is refused, not written to."""

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from reshard.cluster import shard_schema
from reshard.control.store import ControlStore
from reshard.errors import SetupError
from reshard.exit_codes import ExitCode
from reshard.schema_migrations import migrations


def _fresh_database(dsn: str, name: str) -> str:
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(dsn, dbname=name)


def _versions(conn) -> list[tuple[str, int, str]]:
    return [tuple(r) for r in conn.execute("SELECT scope, version, name FROM reshard.schema_version "
                                           "ORDER BY scope, version").fetchall()]


def test_a_control_database_from_before_versioning_is_adopted_and_a_newer_one_refused(env):
    dsn = _fresh_database(env.config.control_dsn, f"{env.name}_ctl_old")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(migrations("reshard.control.migrations")[0].sql)  # what reshard created before versions
        conn.execute("INSERT INTO reshard.shard_maps (epoch, body, digest) VALUES (1, '{}', 'd1')")
        conn.execute("INSERT INTO reshard.migrations (name, from_epoch, to_epoch, state, moves) "
                     "VALUES ('old', 1, 1, 'cut_over', '[]')")
    with ControlStore(dsn).connect() as conn:
        pass
    with psycopg.connect(dsn, autocommit=True) as conn:
        every = [("control", m.version, m.name) for m in migrations("reshard.control.migrations")]
        assert every[:3] == [("control", 1, "base"), ("control", 2, "lifecycle"), ("control", 3, "router_reports")]
        assert _versions(conn) == every
        assert conn.execute("SELECT digest FROM reshard.shard_maps").fetchall() == [("d1",)]
        # the lifecycle's names: a migration cut over before them is baking now
        assert conn.execute("SELECT state FROM reshard.migrations").fetchall() == [("baking",)]
        conn.execute("INSERT INTO reshard.schema_version (scope, version, name) VALUES ('control', 99, 'future')")
    known = len(migrations("reshard.control.migrations"))
    with pytest.raises(SetupError, match=f"control schema at version 99, newer than this reshard knows .{known}.") as err:
        ControlStore(dsn).connect()
    assert err.value.exit_code == ExitCode.BAD_INPUT


def test_a_shard_cluster_from_before_chunks_gets_them_and_keeps_its_cursors(env):
    dsn = _fresh_database(env.dsn("target1"), f"{env.name}_shard_old")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(migrations("reshard.cluster.shard_sql")[0].sql)  # the layout before copy chunks
        conn.execute("INSERT INTO reshard.copy_cursor (migration, move_id, tbl, cursor, snapshot_lsn, done) "
                     "VALUES ('m', 'g:a->b', 'public.t', '[\"41\"]', '0/16B3748', false)")
        shard_schema.install(conn)
        every = [("shard", m.version, m.name) for m in migrations("reshard.cluster.shard_sql")]
        assert every[:2] == [("shard", 1, "base"), ("shard", 2, "copy_chunks")]
        assert _versions(conn) == every
        assert conn.execute("SELECT chunk, chunk_lower, chunk_upper, cursor FROM reshard.copy_cursor").fetchall() \
            == [(0, None, None, ["41"])]
        pk = conn.execute("SELECT array_length(conkey, 1) FROM pg_constraint WHERE "
                          "conrelid = 'reshard.copy_cursor'::regclass AND contype = 'p'").fetchone()[0]
        assert pk == 4
        shard_schema.install(conn)  # current: nothing more to do
        assert _versions(conn) == every
