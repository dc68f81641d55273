"""Install reshard's bookkeeping schema and helper functions on a shard cluster."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from reshard.ddl import capture
from reshard.maps.keyhash import HASH_COMBINE64_SQL
from reshard.maps.shardmap import column, table_ident
from reshard.schema_migrations import upgrade

SHARD_LOCK = 7265736861726401  # serializes reshard processes installing on one cluster at once


def install(conn: psycopg.Connection[Any]) -> None:
    """Bring reshard's schema on a shard cluster to this version (``reshard.cluster.shard_sql``'s
    migrations, see reshard.schema_migrations), and (re)create the hash function."""
    where = f"the cluster at {conn.info.host}:{conn.info.port} (database {conn.info.dbname})"
    upgrade(conn, "reshard.cluster.shard_sql", "shard", SHARD_LOCK, where)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SHARD_LOCK,))
        conn.execute(HASH_COMBINE64_SQL)


WRITER_GUC = "reshard.writer"


def writer_session(conn: psycopg.Connection[Any]) -> None:
    """Make this session write the way reshard's copy and applier must write.

    ``session_replication_role = replica`` keeps FK checks and ordinary triggers off,
    as in logical replication, so rows of a table group may arrive in any order.
    ``reshard.writer`` marks the session for reshard's own fence trigger (ENABLE
    ALWAYS), which lets it through and stops everyone else.
    """
    conn.execute("SET session_replication_role = replica")
    conn.execute("SELECT set_config(%s, 'applier', false)", (WRITER_GUC,))


def forget(conn: psycopg.Connection[Any], migration: str) -> list[str]:
    """Drop this cluster's bookkeeping of a migration: positions, offsets, copy cursors,
    its heartbeat row, its schema-change capture and the replication origins its appliers used."""
    dropped = []
    if capture.uninstall(conn, migration):
        dropped.append("schema-change capture")
    if conn.execute("SELECT to_regclass('reshard.applied_rows')").fetchone()[0]:
        for t in ("applied_rows", "applied_offsets", "copy_cursor"):
            conn.execute(sql.SQL("DELETE FROM reshard.{} WHERE migration IN (%s, %s)").format(sql.Identifier(t)),
                         (migration, f"{migration}:rev"))
        conn.execute("DELETE FROM reshard.heartbeat WHERE migration = %s", (migration,))
    for (origin,) in conn.execute(
        "SELECT roname FROM pg_replication_origin WHERE roname LIKE %s OR roname LIKE %s",
        (f"reshard_fwd_{migration}_%", f"reshard_rev_{migration}_%"),
    ).fetchall():
        try:
            conn.execute("SELECT pg_replication_origin_drop(%s)", (origin,))
            dropped.append(origin)
        except psycopg.errors.ObjectInUse:
            pass  # an applier still holds it; the next cleanup drops it
    return dropped


def pk_text_sql(pk: list[str], alias: str) -> sql.Composable:
    """The key's identity in ``reshard.applied_rows.pk``, computed from the row itself, so
    the applier (which stages typed rows) and teardown always agree on it."""
    return sql.SQL("jsonb_build_array({})::text").format(sql.SQL(", ").join(column(c, alias) for c in pk))


def delete_written_rows(conn: psycopg.Connection[Any], migration: str, move_id: str, info,
                        predicate: sql.Composable) -> int:
    """Delete, on a target, only the rows this migration wrote there: rows of the move's
    predicate that its copy committed (each chunk's range up to its committed cursor, or
    the whole range once that chunk finished) and rows its applier wrote (per-key positions).
    Rows that were there before, or that another migration wrote, stay: a refused or
    aborted migration never deletes a neighbour's data (invariant 8). ``predicate``
    must refer to the table as ``t``."""
    pk_cols = sql.SQL(", ").join(column(c, "t") for c in info.pk)

    def key(field: str) -> sql.Composable:  # a chunk bound or cursor (a JSON array of key texts) as a typed row
        return sql.SQL(", ").join(sql.SQL("({}->>{})::{}").format(column(field, "c"), sql.Literal(i),
                                                                  sql.SQL(info.column(col).type))
                                  for i, col in enumerate(info.pk))

    def bounded(field: str) -> sql.Composable:
        return sql.SQL("coalesce(jsonb_typeof({}) = 'array', false)").format(column(field, "c"))

    # each chunk of the copy wrote (chunk_lower, cursor], or its whole range once done
    copied = sql.SQL(
        "(NOT {lb} OR ({pk}) > ({lk})) AND ((c.done AND (NOT {ub} OR ({pk}) <= ({uk}))) OR ({cb} AND ({pk}) <= ({ck})))"
    ).format(lb=bounded("chunk_lower"), lk=key("chunk_lower"), ub=bounded("chunk_upper"), uk=key("chunk_upper"),
             cb=bounded("cursor"), ck=key("cursor"), pk=pk_cols)
    return conn.execute(sql.SQL(
        "DELETE FROM {table} t WHERE {predicate} AND ("
        "EXISTS (SELECT 1 FROM reshard.copy_cursor c WHERE c.migration = %s AND c.move_id = %s AND c.tbl = %s "
        "AND {copied}) "
        "OR {pk_text} IN (SELECT a.pk FROM reshard.applied_rows a "
        "WHERE a.migration = %s AND a.tbl = %s AND NOT a.deleted))").format(
            table=table_ident(info.name), predicate=predicate, copied=copied, pk_text=pk_text_sql(list(info.pk), "t")),
        (migration, move_id, info.name, migration, info.name),
    ).rowcount
