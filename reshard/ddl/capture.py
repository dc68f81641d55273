"""DDL capture on a cluster whose changes a migration streams: sources from `start`,
targets from the cutover (their changes flow back for a rollback).

Why an event trigger that logs shapes, and not the DDL inside the change stream: Kafka
orders records only within a partition, and Debezium writes each table to its own topic,
partitioned by key, so no record can sit "between" the rows of another topic for a
consumer. What orders a change with the rows is already in every row: Debezium's record
carries the table's columns as decoded at that position. So the applier only needs to
know *what* changed (this log, read from the cluster) and *when every stream has passed
it* (reshard/ddl/follower.py proves that with the catch-up proof's positions); rows of
either shape are made to fit in between (reshard/ddl/changes.py).

The event trigger needs a superuser once per cluster (PostgreSQL's rule); reshard creates
it when it may, and otherwise says how (docs/roles.sql) and streams without capture: a
change then pauses the applier as schema drift, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("reshard.ddl.capture")
TRIGGER = "reshard_ddl_capture"
APPLY_GUC = "reshard.ddl_apply"  # set in reshard's own DDL sessions: their changes are not logged


@dataclass(frozen=True)
class Entry:
    """One logged change of one table on one cluster."""

    id: int
    tbl: str
    tag: str
    statement: str
    before: dict | None
    after: dict | None
    lsn: str


def trigger_installed(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s AND evtenabled <> 'D'",
                        (TRIGGER,)).fetchone() is not None


def install(conn: psycopg.Connection[Any], migration: str, tables: list[str]) -> str | None:
    """Watch ``tables`` for ``migration`` on this cluster (reshard's schema must be installed).
    Returns None when changes are captured, else why not (and what to run). Idempotent: a
    table already watched keeps its recorded shape, so nothing that changed meanwhile is lost."""
    if not trigger_installed(conn):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE EVENT TRIGGER {} ON ddl_command_end EXECUTE FUNCTION reshard.capture_ddl()")
                             .format(sql.Identifier(TRIGGER)))
        except psycopg.errors.InsufficientPrivilege:
            return (f"creating the event trigger needs a superuser once: run `CREATE EVENT TRIGGER {TRIGGER} ON "
                    "ddl_command_end EXECUTE FUNCTION reshard.capture_ddl();` as one (docs/roles.sql)")
        except psycopg.errors.DuplicateObject:
            pass  # another reshard process created it meanwhile
    with conn.transaction():
        for t in tables:
            conn.execute(
                "INSERT INTO reshard.ddl_watch (migration, tbl, relid, shape) "
                "SELECT %s, %s, r, reshard.table_shape(r) FROM (SELECT %s::regclass::oid AS r) x "
                "ON CONFLICT (migration, tbl) DO NOTHING", (migration, t, t))
    return None


def uninstall(conn: psycopg.Connection[Any], migration: str) -> bool:
    """Stop watching for ``migration`` and drop its log; drop the event trigger when no
    migration watches this cluster any more (and reshard may). True when anything was removed."""
    if conn.execute("SELECT to_regclass('reshard.ddl_watch')").fetchone()[0] is None:
        return False
    with conn.transaction():
        n = conn.execute("DELETE FROM reshard.ddl_watch WHERE migration = %s", (migration,)).rowcount
        n += conn.execute("DELETE FROM reshard.ddl_log WHERE migration = %s", (migration,)).rowcount
    if not conn.execute("SELECT 1 FROM reshard.ddl_watch LIMIT 1").fetchone() and trigger_installed(conn):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(TRIGGER)))
            n += 1
        except psycopg.errors.InsufficientPrivilege:
            log.warning("the event trigger %s stays (dropping it needs its owner or a superuser); it logs "
                        "nothing while no migration watches a table", TRIGGER)
    return n > 0


def entries(conn: psycopg.Connection[Any], migration: str, after_id: int) -> list[Entry]:
    """Logged changes after ``after_id``, in the order they were made."""
    rows = conn.execute(
        "SELECT id, tbl, tag, statement, before, after, lsn::text FROM reshard.ddl_log "
        "WHERE migration = %s AND id > %s ORDER BY id", (migration, after_id)).fetchall()
    return [Entry(*r) for r in rows]


def shape(conn: psycopg.Connection[Any], table: str) -> dict | None:
    """The table's shape on this cluster now (None when it does not exist)."""
    row = conn.execute("SELECT reshard.table_shape(to_regclass(%s))", (table,)).fetchone()
    return row[0] if row else None


def mark_applied_session(conn: psycopg.Connection[Any]) -> None:
    """This session applies changes reshard placed: the capture moves its shapes, logs nothing."""
    conn.execute("SELECT set_config(%s, 'on', false)", (APPLY_GUC,))
