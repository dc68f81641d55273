"""Moving tables a target does not have yet, created from the source's own definition.

``pg_dump --schema-only`` of just those tables, in two parts, as pgcopydb does: before
the copy the table itself (columns, types, defaults, CHECK and NOT NULL constraints,
identity columns and the sequences it owns) and its primary key, which the applier's
upserts need; after the copy everything else of the post-data section (secondary
indexes, unique and foreign-key constraints, triggers), so the copy writes into a table
with one index only. reshard's own fence triggers are never copied. A statement the
target cannot take (a foreign key to a table it does not have, a trigger whose function
is missing) is reported, not fatal: the migration does not depend on it.

The tables reshard created are recorded in ``reshard.created_tables`` on the target: the
after-copy part is redone by a rerun until it is done, and ``abort`` drops a table it
created once the migration's rows are gone from it.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors, sql

from reshard.cluster import shard_schema
from reshard.cluster.session import connect
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


def _dump(source_dsn: str, table: str, section: str) -> list[str]:
    """The statements of one pg_dump section for one table, without psql meta-commands,
    comments or session settings."""
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", "--no-comments", f"--section={section}",
         "--table", table_ident(table).as_string(None), "--dbname", source_dsn],
        capture_output=True, text=True, timeout=120,
    )
    if out.returncode != 0:
        raise SetupError(f"pg_dump of {table}'s definition failed: {out.stderr.strip()[:500]}")
    lines = [line for line in out.stdout.splitlines()
             if line and not line.startswith(("--", "\\")) and not re.match(r"^(SET |SELECT pg_catalog\.)", line)]
    return [s.strip() + ";" for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";")]


def _is_primary_key(statement: str) -> bool:
    return " PRIMARY KEY " in statement and statement.startswith("ALTER TABLE")


def _is_reshards_own(statement: str) -> bool:
    return "reshard." in statement and statement.startswith("CREATE TRIGGER")


def _run(conn: psycopg.Connection[Any], statements: list[str], done: Created, where: str) -> None:
    for s in statements:
        try:
            with conn.transaction():
                conn.execute(s)
        except _PRESENT:
            pass
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0]
            done.skipped.append(f"{where}: {s.splitlines()[0][:120]} ({first})")


def create_tables(config: Config, migration: str, target: str, tables: dict[str, str]) -> Created:
    """Create ``tables`` (table -> the source cluster it comes from) on ``target``: the
    table and its primary key. Recorded, so ``finish_tables`` adds the rest after the copy."""
    done = Created(target)
    with connect(config.cluster(target).dsn, f"target cluster {target}", autocommit=True) as conn:
        shard_schema.install(conn)
        for table, source in sorted(tables.items()):
            schema = table.split(".", 1)[0]
            pre = _dump(config.cluster(source).dsn, table, "pre-data")
            keys = [s for s in _dump(config.cluster(source).dsn, table, "post-data") if _is_primary_key(s)]
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                    for s in pre + keys:
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
            post = [s for s in _dump(config.cluster(source).dsn, table, "post-data")
                    if not _is_primary_key(s) and not _is_reshards_own(s)]
            _run(conn, post, done, f"{target} {table}")
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
