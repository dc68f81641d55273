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

from reshard.cluster.catalog import TableInfo
from reshard.maps.shardmap import qualified, quote_ident

SAMPLE_ROWS_PER_BATCH = 2000  # sampled keys per batch: 2 % of the pages at 100,000-row batches


@dataclass
class KeysetCursor:
    table: TableInfo
    predicate: str
    after: list[str] | None = None
    until: list[str] | None = None  # the chunk's last key (inclusive); None: no bound

    @property
    def _pk(self) -> str:
        return ", ".join(quote_ident(c) for c in self.table.pk)

    def _row(self, values: list[str]) -> tuple[str, list[str]]:
        casts = ", ".join(f"%s::{self.table.column(c).type}" for c in self.table.pk)
        return f"({casts})", list(values)

    def _after(self) -> tuple[str, list[Any]]:
        """The cursor's range: after its position, up to the chunk's end."""
        cond, params = "", list[Any]()
        if self.after is not None:
            row, params = self._row(self.after)
            cond = f" AND ({self._pk}) > {row}"
        if self.until is not None:
            row, up = self._row(self.until)
            cond += f" AND ({self._pk}) <= {row}"
            params = [*params, *up]
        return cond, params

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
        cols = ", ".join(f"t.{quote_ident(c)}" for c in self.table.pk)
        texts = ", ".join(f"k.{quote_ident(c)}::text" for c in self.table.pk)
        percent = 100.0 * SAMPLE_ROWS_PER_BATCH / batch_rows
        if percent >= 100.0:
            sample, every = "", batch_rows
        else:
            sample, every = f" TABLESAMPLE SYSTEM ({percent:.6f}) REPEATABLE (0)", SAMPLE_ROWS_PER_BATCH
        sql = (
            f"SELECT {texts} FROM (SELECT {cols}, row_number() OVER (ORDER BY {cols}) AS reshard_n "
            f"FROM {qualified(self.table.name)} t{sample} WHERE {self.predicate}{cond}) k "
            f"WHERE k.reshard_n %% %s = 0 ORDER BY k.reshard_n"
        )
        return [list(r) for r in conn.execute(sql, [*params, every]).fetchall()]

    def batch_select(self, upper: list[str] | None, columns: list[str]) -> tuple[str, list[Any]]:
        """SELECT of the rows in (after, upper] (to the chunk's end when upper is None)."""
        cond, params = self._after()
        if upper is not None:
            row, up = self._row(upper)
            cond += f" AND ({self._pk}) <= {row}"
            params += up
        cols = ", ".join(quote_ident(c) for c in columns)
        return f"SELECT {cols} FROM {qualified(self.table.name)} WHERE {self.predicate}{cond}", params
