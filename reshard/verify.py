"""Does the union of the targets equal the source, for everything that moved?

Per move and table: the rows of the source that the move carries, and the rows of
the target that the same predicate selects, are compared by count and by an
order-independent checksum (the sum of a 64-bit slice of each row's md5), both
computed on the servers. Only when those differ are keys streamed from both sides,
in key order, to name the differing keys. Rows on a target that the new map does
not assign to it are reported as misplaced. Rows are rendered to text with the
same session settings on every server, so equal values give equal text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import psycopg

from reshard.catalog import require_table
from reshard.config import Config
from reshard.control.store import connect
from reshard.planner import Move, Plan
from reshard.shardmap import qualified, quote_ident

SESSION = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; "
    "SET extra_float_digits = 3; SET bytea_output = 'hex'"
)


@dataclass
class TableCheck:
    move: str
    table: str
    source: str
    target: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str
    misplaced_rows: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return (
            self.source_rows == self.target_rows
            and self.source_checksum == self.target_checksum
            and self.misplaced_rows == 0
        )

    def to_dict(self) -> dict:
        return {**self.__dict__, "equal": self.equal}


@dataclass
class VerifyReport:
    checks: list[TableCheck]
    seconds: float

    @property
    def equal(self) -> bool:
        return all(c.equal for c in self.checks)

    def to_dict(self) -> dict:
        return {"equal": self.equal, "seconds": round(self.seconds, 3), "checks": [c.to_dict() for c in self.checks]}


def _row_expr(columns: list[str], alias: str = "t") -> str:
    return "ROW(" + ", ".join(f"{alias}.{quote_ident(c)}" for c in sorted(columns)) + ")::text"


def _summary(conn: psycopg.Connection, table: str, columns: list[str], predicate: str) -> tuple[int, str]:
    row = conn.execute(
        f"SELECT count(*), coalesce(sum(('x' || substr(md5({_row_expr(columns)}), 1, 16))::bit(64)::bigint::numeric), 0)"
        f"::text FROM {qualified(table)} t WHERE {predicate}"
    ).fetchone()
    return int(row[0]), row[1]


def _keyed(conn: psycopg.Connection, table: str, pk: list[str], pk_types: list[str], columns: list[str],
           predicate: str) -> Iterator[tuple[tuple, str]]:
    order = ", ".join(
        f"t.{quote_ident(c)}" + (' COLLATE "C"' if ty in ("text", "character varying") else "")
        for c, ty in zip(pk, pk_types)
    )
    sel = ", ".join(f"t.{quote_ident(c)}" for c in pk)
    with conn.cursor(name=f"reshard_verify_{abs(hash((table, predicate))) % 10**9}") as cur:
        cur.itersize = 5000
        cur.execute(f"SELECT {sel}, md5({_row_expr(columns)}) FROM {qualified(table)} t WHERE {predicate} ORDER BY {order}")
        for row in cur:
            yield tuple(row[:-1]), row[-1]


def _diff(src_rows: Iterator, tgt_rows: Iterator, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    s = next(src_rows, None)
    t = next(tgt_rows, None)
    while (s is not None or t is not None) and len(out) < limit:
        if t is None or (s is not None and s[0] < t[0]):
            out.append({"key": [str(v) for v in s[0]], "problem": "missing on target"})
            s = next(src_rows, None)
        elif s is None or t[0] < s[0]:
            out.append({"key": [str(v) for v in t[0]], "problem": "extra on target"})
            t = next(tgt_rows, None)
        else:
            if s[1] != t[1]:
                out.append({"key": [str(v) for v in s[0]], "problem": "values differ"})
            s = next(src_rows, None)
            t = next(tgt_rows, None)
    return out


def check_move(config: Config, p: Plan, move: Move, table: str, max_diffs: int = 20) -> TableCheck:
    pred = p.predicate_sql(move, table, alias="t")
    group = p.new.groups[move.group]
    with connect(config.cluster(move.source).dsn, f"source cluster {move.source}") as src, \
            connect(config.cluster(move.target).dsn, f"target cluster {move.target}") as tgt:
        for c in (src, tgt):
            c.execute(SESSION)
        info = require_table(src, table, move.source)
        columns = [c.name for c in info.copyable]
        s_rows, s_sum = _summary(src, table, columns, pred)
        t_rows, t_sum = _summary(tgt, table, columns, pred)
        misplaced = tgt.execute(
            f"SELECT count(*) FROM {qualified(table)} t WHERE NOT {group.predicate_sql(table, move.target, 't')}"
        ).fetchone()[0]
        check = TableCheck(move.id, table, move.source, move.target, s_rows, t_rows, s_sum, t_sum, int(misplaced))
        if (s_rows, s_sum) != (t_rows, t_sum):
            pk = list(info.pk)
            pk_types = [info.column(c).base_type for c in pk]
            check.differences = _diff(
                _keyed(src, table, pk, pk_types, columns, pred), _keyed(tgt, table, pk, pk_types, columns, pred),
                max_diffs,
            )
        return check


def verify(config: Config, p: Plan, max_diffs: int = 20) -> VerifyReport:
    started = time.monotonic()
    checks = []
    for move in p.moves:
        for table in sorted(p.new.groups[move.group].tables):
            checks.append(check_move(config, p, move, table, max_diffs))
    return VerifyReport(checks, time.monotonic() - started)
