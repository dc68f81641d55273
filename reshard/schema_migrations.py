"""Versioned schemas for reshard's own tables: ordered migrations, and the version recorded.

A schema (the control database's, a shard cluster's ``reshard`` schema) is a package of
numbered SQL files, ``NNNN_what.sql``. ``upgrade`` applies, in one transaction under an
advisory lock (several reshard processes may connect at once), the files a database has
not recorded in ``reshard.schema_version`` yet, in order, recording each. A database whose
recorded version is newer than this reshard knows is refused: a newer reshard upgraded it,
and an older one must not write to tables it does not understand.

A database from before versioning (reshard's tables, no version table) is version 0: the
first file of each schema is written with IF NOT EXISTS, so it adopts one in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from reshard.errors import SetupError

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(package: str) -> list[Migration]:
    """The package's migrations in order; numbered 1, 2, 3… without gaps."""
    found = []
    for entry in resources.files(package).iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise AssertionError(f"{package}: migrations must be numbered 1..n without gaps: {[m.version for m in found]}")
    return found


def current_version(conn: psycopg.Connection[Any], scope: str) -> int:
    cur = conn.cursor(row_factory=tuple_row)
    if cur.execute("SELECT to_regclass('reshard.schema_version')").fetchone()[0] is None:
        return 0
    return cur.execute("SELECT coalesce(max(version), 0) FROM reshard.schema_version WHERE scope = %s",
                       (scope,)).fetchone()[0]


def upgrade(conn: psycopg.Connection[Any], package: str, scope: str, lock_id: int, what: str) -> list[Migration]:
    """Bring ``scope``'s schema on ``conn``'s database to this reshard's version; returns
    the migrations applied (none when it was current). ``what`` names the database in errors."""
    known = migrations(package)
    with conn.transaction():
        cur = conn.cursor(row_factory=tuple_row)
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
        cur.execute("CREATE SCHEMA IF NOT EXISTS reshard")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS reshard.schema_version (scope text NOT NULL, version integer NOT NULL, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (scope, version))"
        )
        current = current_version(conn, scope)
        if current > known[-1].version:
            raise SetupError(
                f"{what} has reshard's {scope} schema at version {current}, newer than this reshard knows "
                f"({known[-1].version}): a newer reshard upgraded it; use that version (or newer) here"
            )
        pending = [m for m in known if m.version > current]
        for m in pending:
            cur.execute(m.sql)
            cur.execute("INSERT INTO reshard.schema_version (scope, version, name) VALUES (%s, %s, %s)",
                        (scope, m.version, m.name))
    return pending
