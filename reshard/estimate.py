"""How many rows and bytes a move carries, from the server's statistics (no scans).

Hash moves between maps with the same bucket count are estimated from the share
of buckets that move (the partition hash spreads keys uniformly); every other move
asks the planner (EXPLAIN) for its row estimate of the move's predicate.
"""

from __future__ import annotations

import json

import psycopg

from reshard.catalog import TableInfo
from reshard.planner import Move, Plan, _same_buckets
from reshard.shardmap import qualified


def _explain_rows(conn: psycopg.Connection, sql: str) -> int:
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchone()
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return int(doc[0]["Plan"]["Plan Rows"])


def table_rows(conn: psycopg.Connection, info: TableInfo) -> int:
    """reltuples, or the planner's page-based guess for a never-analyzed table."""
    if info.est_rows > 0:
        return info.est_rows
    return _explain_rows(conn, f"SELECT 1 FROM {qualified(info.name)}")


def move_rows(conn: psycopg.Connection, p: Plan, move: Move, info: TableInfo) -> int:
    total = table_rows(conn, info)
    og, ng = p.old.groups[move.group], p.new.groups[move.group]
    if _same_buckets(og, ng):
        n = ng.scheme.buckets
        moving = sum(
            1 for b in range(n) if og.scheme.assignment[b] == move.source and ng.scheme.assignment[b] == move.target
        )
        return round(total * moving / n)
    if total == 0:
        return 0
    return _explain_rows(conn, f"SELECT 1 FROM {qualified(info.name)} WHERE {p.predicate_sql(move, info.name)}")


def row_bytes(info: TableInfo, rows: int) -> int:
    """Bytes for ``rows`` rows at the table's average on-disk row size."""
    if info.est_rows <= 0:
        return 0
    return round(info.est_bytes * rows / info.est_rows)
