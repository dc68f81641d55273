"""Does the union of the targets equal the source, for everything that moved?

Per move and table: the rows of the source that the move carries, and the rows of
the target that the same predicate selects, are compared by count and by an
order-independent checksum (the sum of a 64-bit slice of each row's md5), both
computed on the servers. Only when those differ are keys streamed from both sides,
in key order, to find the candidates. Rows on a target that the new map does not
assign to it are reported as misplaced. Rows are rendered to text with the same
session settings on every server, so equal values give equal text.

Under a live write load the two sides are read at slightly different moments, so a
candidate may only be in flight. With a ``catch_up`` callback (the catch-up proof),
candidates are re-checked: their source rows are locked FOR SHARE, which waits for
writes in progress on them and holds new ones back, then catch-up is proven to a
position taken under the locks, so the target must now hold exactly the locked values.
A key absent from the source cannot be locked; it counts as a difference only if it
is still on the target after every round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reshard.cluster.catalog import TableInfo as TableInfoT
from reshard.cluster.catalog import require_table
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.maps.planner import Move, Plan
from reshard.maps.shardmap import ShardMap, column, table_ident

SESSION = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; "
    "SET extra_float_digits = 3; SET bytea_output = 'hex'"
)


MAX_CANDIDATES = 50_000
RECHECK_BATCH = 500


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
    keys_compared: bool = False  # the checksums differed, so every key was compared
    rechecked: int = 0  # candidates re-checked under row locks after catch-up
    candidates: list[tuple] = field(default_factory=list, repr=False)
    info: Any = field(default=None, repr=False)

    @property
    def equal(self) -> bool:
        if self.misplaced_rows:
            return False
        if self.keys_compared:
            # the checksums were read a moment earlier than the keys: under a live load a change
            # in flight then can be applied by now, so the key-by-key comparison decides
            return not self.differences
        return self.source_rows == self.target_rows and self.source_checksum == self.target_checksum

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("candidates", "info")}
        return {**d, "equal": self.equal}


@dataclass
class VerifyReport:
    checks: list[TableCheck]
    seconds: float

    @property
    def equal(self) -> bool:
        return all(c.equal for c in self.checks)

    def to_dict(self) -> dict:
        return {"equal": self.equal, "seconds": round(self.seconds, 3), "checks": [c.to_dict() for c in self.checks]}


def _cols(columns: list[str], alias: str = "t") -> sql.Composable:
    return sql.SQL(", ").join(column(c, alias) for c in columns)


def _row_expr(columns: list[str], alias: str = "t") -> sql.Composable:
    return sql.SQL("ROW({})::text").format(_cols(sorted(columns), alias))


def row_hash(columns: list[str], alias: str = "t") -> sql.Composable:
    """A row's 64-bit slice of md5 as numeric: the checksum is the sum of these."""
    return sql.SQL("('x' || substr(md5({}), 1, 16))::bit(64)::bigint::numeric").format(_row_expr(columns, alias))


def summary(conn: psycopg.Connection[Any], table: str, columns: list[str], predicate: sql.Composable) -> tuple[int, str]:
    row = conn.execute(sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} t WHERE {}").format(
        row_hash(columns), table_ident(table), predicate)).fetchone()
    return int(row[0]), row[1]


def _keyed(conn: psycopg.Connection[Any], table: str, pk: list[str], pk_types: list[str], columns: list[str],
           predicate: sql.Composable) -> Iterator[tuple[tuple, str]]:
    order = sql.SQL(", ").join(
        sql.SQL('{} COLLATE "C"').format(column(c, "t")) if ty in ("text", "character varying") else column(c, "t")
        for c, ty in zip(pk, pk_types, strict=True)
    )
    with conn.cursor(name=f"reshard_verify_{abs(hash((table, predicate.as_string(conn)))) % 10**9}") as cur:
        cur.itersize = 5000
        cur.execute(sql.SQL("SELECT {}, md5({}) FROM {} t WHERE {} ORDER BY {}").format(
            _cols(pk), _row_expr(columns), table_ident(table), predicate, order))
        for row in cur:
            yield tuple(row[:-1]), row[-1]


def _diff(src_rows: Iterator, tgt_rows: Iterator, limit: int, target: str) -> list[tuple[tuple, str]]:
    """(key, problem) for every key whose rows differ, in key order, up to ``limit``."""
    out: list[tuple[tuple, str]] = []
    s = next(src_rows, None)
    t = next(tgt_rows, None)
    while (s is not None or t is not None) and len(out) < limit:
        if t is None or (s is not None and s[0] < t[0]):
            out.append((s[0], f"missing on {target}"))
            s = next(src_rows, None)
        elif s is None or t[0] < s[0]:
            out.append((t[0], f"extra on {target}"))
            t = next(tgt_rows, None)
        else:
            if s[1] != t[1]:
                out.append((s[0], "values differ"))
            s = next(src_rows, None)
            t = next(tgt_rows, None)
    return out


def _describe(found: list[tuple[tuple, str]], limit: int) -> list[dict[str, Any]]:
    return [{"key": [str(v) for v in k], "problem": problem} for k, problem in found[:limit]]


def _keys_sql(table: TableInfoT, keys: list[tuple]) -> tuple[sql.Composable, list]:
    pk = list(table.pk)
    casts = sql.SQL("({})").format(sql.SQL(", ").join(
        sql.SQL("%s::{}").format(sql.SQL(table.column(c).base_type)) for c in pk))
    return (sql.SQL("({}) IN (VALUES {})").format(_cols(pk), sql.SQL(", ").join([casts] * len(keys))),
            [v for k in keys for v in k])


def _recheck(config: Config, move: Move, table: str, info, keys: list[tuple], writable: str,
             catch_up: Callable[[], object]) -> tuple[list[tuple[tuple, str]], list[tuple], list[tuple]]:
    """One round for a batch of keys written on cluster ``writable`` (the side that
    accepts their writes now): (definite differences, keys still in doubt, keys whose
    rows stayed locked by writers past the lock timeout)."""
    columns = [c.name for c in info.copyable]
    cond, params = _keys_sql(info, keys)
    sel = _cols(list(info.pk))
    other = move.target if writable == move.source else move.source
    with connect(config.cluster(writable).dsn, f"cluster {writable}") as live, \
            connect(config.cluster(other).dsn, f"cluster {other}") as copy:
        for c in (live, copy):
            c.execute(SESSION)
        live.execute("SET LOCAL lock_timeout = '2s'")
        try:
            locked = {tuple(r[:-1]): r[-1] for r in live.execute(
                sql.SQL("SELECT {}, md5({}) FROM {} t WHERE {} FOR SHARE").format(
                    sel, _row_expr(columns), table_ident(table), cond), params).fetchall()}
        except psycopg.errors.LockNotAvailable:
            live.rollback()
            return [], [], keys  # busy rows: try again next round
        catch_up()  # proven up to a position taken while the rows above are locked
        copied = {tuple(r[:-1]): r[-1] for r in copy.execute(
            sql.SQL("SELECT {}, md5({}) FROM {} t WHERE {}").format(sel, _row_expr(columns), table_ident(table), cond),
            params).fetchall()}
        live.rollback()
    definite, doubtful = [], []
    for k in keys:
        if k in locked:
            if k not in copied:
                definite.append((k, f"missing on {other}"))
            elif locked[k] != copied[k]:
                definite.append((k, "values differ"))
        elif k in copied:
            doubtful.append(k)  # absent where it is written: may be a delete still in flight
    return definite, doubtful, []


def check_move(config: Config, p: Plan, move: Move, table: str, max_diffs: int = 20) -> TableCheck:
    """One (move, table): counts and checksums, and the differing keys when they differ."""
    with connect(config.cluster(move.source).dsn, f"source cluster {move.source}") as src, \
            connect(config.cluster(move.target).dsn, f"target cluster {move.target}") as tgt:
        for c in (src, tgt):
            c.execute(SESSION)
        return compare(src, tgt, p, move, table, require_table(src, table, move.source), max_diffs)


def compare(src: psycopg.Connection[Any], tgt: psycopg.Connection[Any], p: Plan, move: Move, table: str,
            info: Any, max_diffs: int = 20, within: sql.Composable | None = None) -> TableCheck:
    """check_move on sessions the caller holds (SESSION settings applied). ``within``
    narrows it to part of the key space (a continuous check's chunk); the misplaced-row
    count is then skipped (it reads the whole target table)."""
    pred = p.predicate_sql(move, table, alias="t")
    if within is not None:
        pred = sql.SQL("{} AND {}").format(pred, within)
    group = p.new.groups[move.group]
    columns = [c.name for c in info.copyable]
    s_rows, s_sum = summary(src, table, columns, pred)
    t_rows, t_sum = summary(tgt, table, columns, pred)
    misplaced = 0 if within is not None else tgt.execute(sql.SQL("SELECT count(*) FROM {} t WHERE NOT {}").format(
        table_ident(table), group.predicate_sql(table, move.target, "t"))).fetchone()[0]
    check = TableCheck(move.id, table, move.source, move.target, s_rows, t_rows, s_sum, t_sum, int(misplaced))
    if (s_rows, s_sum) != (t_rows, t_sum):
        pk = list(info.pk)
        pk_types = [info.column(c).base_type for c in pk]
        found = _diff(_keyed(src, table, pk, pk_types, columns, pred),
                      _keyed(tgt, table, pk, pk_types, columns, pred), MAX_CANDIDATES + 1, move.target)
        check.differences = _describe(found, max_diffs)
        check.candidates = [k for k, _problem in found]
        check.keys_compared = True
    check.info = info
    return check


def recheck(config: Config, p: Plan, check: TableCheck, catch_up: Callable[[], object], rounds: int,
            max_diffs: int, active: ShardMap | None = None) -> None:
    """Settle a check's candidates under row locks (see the module docstring). Each key
    is locked where it is written now: on the source, or on the target once its wave
    is cut over (``active`` is the routing map)."""
    move = next(m for m in p.moves if m.id == check.move)
    if len(check.candidates) > MAX_CANDIDATES:
        check.differences = [{"key": [], "problem": f"more than {MAX_CANDIDATES:,} keys differ: is the applier "
                                                    "running and caught up?"}]
        check.rechecked = len(check.candidates)
        return
    shard_cols = [list(check.info.pk).index(c) for c in p.new.groups[move.group].key_columns(check.table)]

    def writable(key: tuple) -> str:
        if active is None:
            return move.source
        owner = active.owner(check.table, [key[i] for i in shard_cols])
        return move.target if owner == move.target else move.source

    pending = list(check.candidates)
    definite: list[tuple[tuple, str]] = []
    doubtful: list[tuple] = []
    busy: list[tuple] = []
    for _round in range(rounds):
        doubtful, busy = [], []
        for side in (move.source, move.target):
            mine = [k for k in pending if writable(k) == side]
            for i in range(0, len(mine), RECHECK_BATCH):
                d, s, b = _recheck(config, move, check.table, check.info, mine[i:i + RECHECK_BATCH], side, catch_up)
                definite += d
                doubtful += s
                busy += b
        pending = doubtful + busy
        if not pending:
            break
    check.rechecked = len(check.candidates)
    check.differences = _describe(
        definite + [(k, "extra row where it is not written") for k in doubtful]
        + [(k, f"undecided: its row stayed locked by writers through {rounds} rounds") for k in busy], max_diffs)


def verify(config: Config, p: Plan, max_diffs: int = 20, catch_up: Callable[[], object] | None = None,
           rounds: int = 3, active: ShardMap | None = None) -> VerifyReport:
    """Compare every move's tables; with ``catch_up``, settle live-load candidates too."""
    started = time.monotonic()
    checks = []
    for move in p.moves:
        for table in sorted(p.new.groups[move.group].tables):
            check = check_move(config, p, move, table, max_diffs)
            if check.candidates and catch_up is not None:
                recheck(config, p, check, catch_up, rounds, max_diffs, active)
            checks.append(check)
    return VerifyReport(checks, time.monotonic() - started)
