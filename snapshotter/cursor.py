"""Keyset pagination over a table's primary key, restricted to a move's predicate.

Batches are ``(after, upper]`` in primary-key order, within the cursor's chunk
``(after, until]`` (a unit's key range split for parallel copy; ``until`` None: to the
end). The boundaries of all batches are found first, in one ordered pass over a sample
of the keys (``uppers``), then each batch is copied with a range condition. Key values travel as their text form and are
cast back to the column types, so any primary-key type and composite keys work, and
the cursor serializes to plain JSON on the target with the rows it covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from reshard.cluster.catalog import TableInfo
from reshard.maps.shardmap import column, table_ident

SAMPLE_ROWS_PER_BATCH = 2000  # sampled keys per batch: 2 % of the pages at 100,000-row batches


@dataclass
class KeysetCursor:
    table: TableInfo
    predicate: sql.Composable
    after: list[str] | None = None
    until: list[str] | None = None  # the chunk's last key (inclusive); None: no bound

    def _pk(self, alias: str | None = None) -> sql.Composable:
        return sql.SQL(", ").join(column(c, alias) for c in self.table.pk)

    def _row(self, values: list[str]) -> tuple[sql.Composable, list[str]]:
        casts = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(self.table.column(c).type)) for c in self.table.pk)
        return sql.SQL("({})").format(casts), list(values)

    def _bound(self, op: str, values: list[str]) -> tuple[sql.Composable, list[str]]:
        row, params = self._row(values)
        return sql.SQL(" AND ({}) {} {}").format(self._pk(), sql.SQL(op), row), params

    def _after(self) -> tuple[sql.Composable, list[Any]]:
        """The cursor's range: after its position, up to the chunk's end."""
        parts: list[sql.Composable] = []
        params: list[Any] = []
        for op, values in ((">", self.after), ("<=", self.until)):
            if values is not None:
                cond, more = self._bound(op, values)
                parts.append(cond)
                params += more
        return sql.Composed(parts), params

    def uppers(self, conn: psycopg.Connection[Any], batch_rows: int) -> list[list[str]]:
        """The last key of every batch of about ``batch_rows`` rows after the cursor, in key
        order, from one pass over a sample of the table's pages.

        An exact pass (numbering every moving key) costs a sixth of the copy itself; the
        boundaries need not be exact, only ordered, since each batch is the key range
        ``(after, upper]`` whatever its size. ``TABLESAMPLE SYSTEM`` reads about
        SAMPLE_ROWS_PER_BATCH rows per batch (2 % of the pages at 100,000-row batches) and
        every SAMPLE_ROWS_PER_BATCH-th sampled key, in the key columns' own order (never their
        text form, which would sort every remaining key per batch), ends a batch. Below
        that many rows per batch the pass is exact."""
        cond, params = self._after()
        texts = sql.SQL(", ").join(sql.SQL("{}::text").format(column(c, "k")) for c in self.table.pk)
        percent = 100.0 * SAMPLE_ROWS_PER_BATCH / batch_rows
        if percent >= 100.0:
            sample: sql.Composable = sql.SQL("")
            every = batch_rows
        else:
            sample = sql.SQL(" TABLESAMPLE SYSTEM ({}) REPEATABLE (0)").format(sql.Literal(round(percent, 6)))
            every = SAMPLE_ROWS_PER_BATCH
        query = sql.SQL(
            "SELECT {texts} FROM (SELECT {cols}, row_number() OVER (ORDER BY {cols}) AS reshard_n "
            "FROM {table} t{sample} WHERE {predicate}{cond}) k "
            "WHERE k.reshard_n %% %s = 0 ORDER BY k.reshard_n"
        ).format(texts=texts, cols=self._pk("t"), table=table_ident(self.table.name), sample=sample,
                 predicate=self.predicate, cond=cond)
        return [list(r) for r in conn.execute(query, [*params, every]).fetchall()]

    def batch_select(self, upper: list[str] | None, columns: list[str]) -> tuple[sql.Composable, list[Any]]:
        """SELECT of the rows in (after, upper] (to the chunk's end when upper is None)."""
        cond, params = self._after()
        if upper is not None:
            more, up = self._bound("<=", upper)
            cond, params = sql.Composed([cond, more]), [*params, *up]
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        return sql.SQL("SELECT {} FROM {} WHERE {}{}").format(cols, table_ident(self.table.name), self.predicate,
                                                              cond), params
