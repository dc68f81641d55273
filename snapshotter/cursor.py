"""Keyset pagination over a table's primary key, restricted to a move's predicate.

Batches are ``(after, upper]`` in primary-key order. The boundaries of all batches are
found first, in one ordered pass over the keys (``uppers``), then each batch is copied
with a range condition. Key values travel as their text form and are
cast back to the column types, so any primary-key type and composite keys work, and
the cursor serializes to plain JSON on the target with the rows it covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from reshard.catalog import TableInfo
from reshard.shardmap import qualified, quote_ident


@dataclass
class KeysetCursor:
    table: TableInfo
    predicate: str
    after: list[str] | None = None

    @property
    def _pk(self) -> str:
        return ", ".join(quote_ident(c) for c in self.table.pk)

    def _row(self, values: list[str]) -> tuple[str, list[str]]:
        casts = ", ".join(f"%s::{self.table.column(c).type}" for c in self.table.pk)
        return f"({casts})", list(values)

    def _after(self) -> tuple[str, list[Any]]:
        if self.after is None:
            return "", []
        row, params = self._row(self.after)
        return f" AND ({self._pk}) > {row}", params

    def uppers(self, conn: psycopg.Connection, batch_rows: int) -> list[list[str]]:
        """The last key of every full batch after the cursor, in key order, from one pass
        over the primary-key index (the key columns are ordered by the table's own types,
        never by their text form, which would sort every remaining key per batch)."""
        cond, params = self._after()
        cols = ", ".join(f"t.{quote_ident(c)}" for c in self.table.pk)
        texts = ", ".join(f"k.{quote_ident(c)}::text" for c in self.table.pk)
        sql = (
            f"SELECT {texts} FROM (SELECT {cols}, row_number() OVER (ORDER BY {cols}) AS reshard_n "
            f"FROM {qualified(self.table.name)} t WHERE {self.predicate}{cond}) k "
            f"WHERE k.reshard_n %% %s = 0 ORDER BY k.reshard_n"
        )
        return [list(r) for r in conn.execute(sql, [*params, batch_rows]).fetchall()]

    def batch_select(self, upper: list[str] | None, columns: list[str]) -> tuple[str, list[Any]]:
        """SELECT of the rows in (after, upper] (to the end when upper is None)."""
        cond, params = self._after()
        if upper is not None:
            row, up = self._row(upper)
            cond += f" AND ({self._pk}) <= {row}"
            params += up
        cols = ", ".join(quote_ident(c) for c in columns)
        return f"SELECT {cols} FROM {qualified(self.table.name)} WHERE {self.predicate}{cond}", params
