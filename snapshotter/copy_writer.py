"""Stream one batch of rows from a source snapshot into a target, with its cursor.

Rows flow block by block (``COPY … TO STDOUT`` into ``COPY … FROM STDIN``), never
whole tables in memory. The batch and the cursor that records it commit in one
target transaction: after a crash the target holds whole batches and knows which.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from reshard.shardmap import qualified, quote_ident
from snapshotter.cursor import KeysetCursor


@dataclass
class BatchResult:
    rows: int
    bytes: int


def load_cursor(tgt: psycopg.Connection, migration: str, move_id: str, table: str) -> dict | None:
    row = tgt.execute(
        "SELECT cursor, rows_copied, bytes_copied, snapshot_lsn::text, resumed_lsn::text, done "
        "FROM reshard.copy_cursor WHERE migration = %s AND move_id = %s AND tbl = %s",
        (migration, move_id, table),
    ).fetchone()
    if row is None:
        return None
    keys = ("cursor", "rows_copied", "bytes_copied", "snapshot_lsn", "resumed_lsn", "done")
    return dict(zip(keys, row))


def copy_batch(
    src: psycopg.Connection,
    tgt: psycopg.Connection,
    cursor: KeysetCursor,
    upper: list[str] | None,
    columns: list[str],
    *,
    migration: str,
    move_id: str,
    snapshot_lsn: str,
    resumed_lsn: str | None,
    totals: tuple[int, int],
) -> BatchResult:
    """Copy (cursor.after, upper] and advance the cursor, atomically on the target.

    ``src`` must already be inside the imported snapshot's transaction.
    """
    select, params = cursor.batch_select(upper, columns)
    col_list = ", ".join(quote_ident(c) for c in columns)
    rows = nbytes = 0
    done = upper is None
    with tgt.transaction():
        with src.cursor().copy(f"COPY ({select}) TO STDOUT", params) as out, tgt.cursor().copy(
            f"COPY {qualified(cursor.table.name)} ({col_list}) FROM STDIN"
        ) as inp:
            for block in out:  # the server sends one CopyData message per row
                inp.write(block)
                rows += 1
                nbytes += len(block)
        tgt.execute(
            "INSERT INTO reshard.copy_cursor (migration, move_id, tbl, cursor, rows_copied, bytes_copied, "
            "snapshot_lsn, resumed_lsn, done, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
            "ON CONFLICT (migration, move_id, tbl) DO UPDATE SET cursor = EXCLUDED.cursor, "
            "rows_copied = EXCLUDED.rows_copied, bytes_copied = EXCLUDED.bytes_copied, "
            "resumed_lsn = EXCLUDED.resumed_lsn, done = EXCLUDED.done, updated_at = now()",
            (
                migration, move_id, cursor.table.name, Jsonb(upper if upper is not None else cursor.after),
                totals[0] + rows, totals[1] + nbytes, snapshot_lsn, resumed_lsn, done,
            ),
        )
    if upper is not None:
        cursor.after = upper
    return BatchResult(rows, nbytes)
