"""Moving tables a target does not have yet, created from the source's own definition.

The definition is read from the source's catalog (reshard/cluster/table_ddl.py: no
``pg_dump`` of a matching major needed), in two parts, as pgcopydb does: before the copy
the table itself (columns, types, defaults, CHECK and NOT NULL constraints, identity
columns and the sequences it owns) and its primary key, which the applier's upserts
need; after the copy everything else (secondary indexes, unique and foreign-key
constraints, triggers), so the copy writes into a table with one index only. reshard's
own fence triggers are never copied. A statement the
target cannot take (a foreign key to a table it does not have, a trigger whose function
is missing) is reported, not fatal: the migration does not depend on it.

The tables reshard created are recorded in ``reshard.created_tables`` on the target: the
after-copy part is redone by a rerun until it is done, and ``abort`` drops a table it
created once the migration's rows are gone from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors, sql

from reshard.cluster import shard_schema, table_ddl
from reshard.cluster.session import connect
from reshard.cluster.table_ddl import Statement, TableDDL
from reshard.config import Config
from reshard.errors import SetupError
from reshard.maps.shardmap import table_ident

# a statement that already took effect (a rerun after a crash): nothing to do
_PRESENT = (errors.DuplicateTable, errors.DuplicateObject, errors.InvalidTableDefinition)


@dataclass
class Created:
    """What ``create_tables`` / ``finish_tables`` did on one target."""
    target: str
    tables: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # statements the target could not take, and why


def _definition(config: Config, source: str, table: str) -> TableDDL:
    with connect(config.cluster(source).dsn, f"source cluster {source}", autocommit=True) as conn:
        return table_ddl.read(conn, table)


def _run(conn: psycopg.Connection[Any], statements: list[Statement], done: Created, where: str) -> None:
    for s in statements:
        try:
            with conn.transaction():
                conn.execute(s)
        except _PRESENT:
            pass
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0]
            done.skipped.append(f"{where}: {s.as_string(conn).splitlines()[0][:120]} ({first})")


def create_tables(config: Config, migration: str, target: str, tables: dict[str, str]) -> Created:
    """Create ``tables`` (table -> the source cluster it comes from) on ``target``: the
    table and its primary key. Recorded, so ``finish_tables`` adds the rest after the copy."""
    done = Created(target)
    with connect(config.cluster(target).dsn, f"target cluster {target}", autocommit=True) as conn:
        shard_schema.install(conn)
        for table, source in sorted(tables.items()):
            schema = table.split(".", 1)[0]
            ddl = _definition(config, source, table)
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                    for s in ddl.pre + ddl.primary_key:
                        conn.execute(s)
                    conn.execute("INSERT INTO reshard.created_tables (migration, tbl, source) VALUES (%s, %s, %s) "
                                 "ON CONFLICT DO NOTHING", (migration, table, source))
            except psycopg.Error as exc:
                raise SetupError(f"{table} does not exist on {target}, and creating it from {source}'s definition "
                                 f"failed: {str(exc).strip().splitlines()[0]}") from None
            done.tables.append(table)
    return done


def finish_tables(config: Config, migration: str, target: str) -> Created:
    """After the copy: the post-data part (indexes, constraints, triggers) of every table
    reshard created on ``target`` for ``migration`` and has not finished yet."""
    done = Created(target)
    with connect(config.cluster(target).dsn, f"target cluster {target}", autocommit=True) as conn:
        rows = conn.execute("SELECT tbl, source FROM reshard.created_tables WHERE migration = %s AND NOT finished "
                            "ORDER BY tbl", (migration,)).fetchall()
        for table, source in rows:
            _run(conn, _definition(config, source, table).post, done, f"{target} {table}")
            conn.execute("UPDATE reshard.created_tables SET finished = true WHERE migration = %s AND tbl = %s",
                         (migration, table))
            done.tables.append(table)
    return done


def drop_created(conn: psycopg.Connection[Any], migration: str) -> list[str]:
    """On abort, after the migration's rows are deleted: drop the tables it created that
    are empty now (a table someone wrote into since stays)."""
    dropped: list[str] = []
    if conn.execute("SELECT to_regclass('reshard.created_tables')").fetchone()[0] is None:
        return dropped
    for (table,) in conn.execute("SELECT tbl FROM reshard.created_tables WHERE migration = %s",
                                 (migration,)).fetchall():
        name = table_ident(table)
        if conn.execute("SELECT to_regclass(%s)", (name.as_string(conn),)).fetchone()[0] is not None:
            if conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(name)).fetchone()[0]:
                conn.execute(sql.SQL("DROP TABLE {}").format(name))
                dropped.append(table)
        conn.execute("DELETE FROM reshard.created_tables WHERE migration = %s AND tbl = %s", (migration, table))
    return dropped
