"""The continuous consistency checker (``reshard verify NAME --continuous``).

While a migration streams or bakes, it walks every (move, table) of the key space in
primary-key chunks, comparing the source's and the target's rows of each chunk by count
and checksum (reshard/proof/verify.py, narrowed to the chunk), throttled to a row rate so the
sources keep their latency. A chunk that differs is settled key by key under row locks
after proving catch-up past the lock position (verify's re-check), so replication lag
is never reported as corruption; what still differs is divergence. So silent
divergence is found within one pass (the key space over the rate), not only at cutover.

Results go where an operator looks: each mismatch and each finished pass is an event
(control database, and the Kafka event stream), ``reshard status`` shows the last pass,
and a pass is recorded as a verification, so the cutover's verification gate refuses
after a pass that found divergence and accepts one that found none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import sql

from reshard.cluster.catalog import require_table
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control import states
from reshard.control.records import MigrationRecord
from reshard.control.states import State
from reshard.control.store import ControlStore
from reshard.errors import MigrationError
from reshard.maps.planner import Move, Plan
from reshard.maps.shardmap import table_ident
from reshard.proof.verify import SESSION, TableCheck, compare, recheck, row_hash, summary

# small chunks at a modest rate: each chunk is a short burst of work on the source, and
# bursts, not the rows per second, are what the application's p99 feels (bench/check_impact.py)
DEFAULT_CHUNK_ROWS = 200
DEFAULT_MAX_ROWS_PER_SECOND = 2000.0


@dataclass
class Mismatch:
    move: str
    table: str
    key: list[str]
    problem: str


@dataclass
class PassResult:
    number: int
    chunks: int = 0
    rows: int = 0
    rechecked_chunks: int = 0  # chunks whose checksums differed and were settled key by key
    mismatches: list[Mismatch] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = False  # walked the whole key space (not stopped part-way)

    @property
    def equal(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "equal": self.equal}


def _pk_tuple(info: Any) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(c) for c in info.pk))


def _bound(values: tuple, info: Any) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(info.column(c).base_type)) for c, v in zip(info.pk, values)))


@dataclass
class SourceChunk:
    rows: int
    checksum: str
    last: tuple | None  # the chunk's greatest primary key (None: no rows)


def source_chunk(conn: psycopg.Connection[Any], table: str, info: Any, columns: list[str], predicate: sql.Composable,
                 lower: tuple | None, chunk_rows: int) -> SourceChunk:
    """The next chunk of the source's moving rows above ``lower`` (exclusive): its count,
    checksum and last key, in one keyset read (an index range scan of ``chunk_rows`` rows).
    One round trip a chunk on the source: the application shares it."""
    pk = [sql.Identifier(c) for c in info.pk]
    where = predicate if lower is None else sql.SQL("{} AND {} > {}").format(
        predicate, _pk_tuple(info), _bound(lower, info))
    row = conn.execute(sql.SQL(
        "SELECT count(*) OVER (), sum(c.reshard_hash) OVER ()::text, {pk} FROM "
        "(SELECT {t_pk}, {hash} AS reshard_hash FROM {table} t WHERE {where} ORDER BY {t_pk} LIMIT {n}) c "
        "ORDER BY {desc} LIMIT 1").format(
        pk=sql.SQL(", ").join(sql.SQL("c.") + c for c in pk), t_pk=sql.SQL(", ").join(sql.SQL("t.") + c for c in pk),
        hash=row_hash(columns), table=table_ident(table), where=where, n=sql.Literal(chunk_rows),
        desc=sql.SQL(", ").join(sql.SQL("c.") + c + sql.SQL(" DESC") for c in pk))).fetchone()
    if row is None:
        return SourceChunk(0, "0", None)
    return SourceChunk(int(row[0]), row[1], tuple(row[2:]))


def within(info: Any, lower: tuple | None, upper: tuple | None) -> sql.Composable:
    pk = _pk_tuple(info)
    parts = []
    if lower is not None:
        parts.append(sql.SQL("{} > {}").format(pk, _bound(lower, info)))
    if upper is not None:
        parts.append(sql.SQL("{} <= {}").format(pk, _bound(upper, info)))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")


class CheckHost(Protocol):
    """What the checker needs of the coordinator that runs it (reshard.coordinator.Coordinator)."""

    config: Config
    store: ControlStore

    def record(self, name: str) -> tuple[MigrationRecord, Plan]: ...
    def wait(self, name: str, timeout: float) -> Any: ...


class ContinuousChecker:
    def __init__(self, co: CheckHost, migration: str, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 max_rows_per_second: float = DEFAULT_MAX_ROWS_PER_SECOND, max_diffs: int = 20,
                 say: Callable[[str], None] | None = None, stop: threading.Event | None = None):
        self.co = co
        self.migration = migration
        self.chunk_rows = chunk_rows
        self.max_rows_per_second = max_rows_per_second
        self.max_diffs = max_diffs
        self.say = say or (lambda _m: None)
        self.stop = stop or threading.Event()

    def _units(self, p: Plan) -> list[tuple[Move, str]]:
        return [(m, t) for m in p.moves for t in sorted(p.new.groups[m.group].tables)]

    def run(self, passes: int | None = None, duration: float | None = None) -> list[PassResult]:
        """Passes until ``passes`` are done, ``duration`` seconds passed, or ``stop`` is set."""
        results: list[PassResult] = []
        deadline = time.monotonic() + duration if duration else None
        store = self.co.store
        store.set_state(self.migration, State.VALIDATING, why="verify --continuous started",
                        only_from=(State.STREAMING, State.SHADOWING, State.ROLLED_BACK))  # while baking it stays baking
        try:
            while not self.stop.is_set() and (passes is None or len(results) < passes):
                results.append(self.one_pass(len(results) + 1, deadline))
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:  # a cutover may have moved it on meanwhile: then it is left where it is
            store.set_state(self.migration, store.settled_state(self.migration), why="verify --continuous ended",
                            only_from=(State.VALIDATING,), passes=len(results))
        return results

    def one_pass(self, number: int, deadline: float | None = None) -> PassResult:
        store = self.co.store
        rec, p = self.co.record(self.migration)
        if rec.state not in states.FLOWING:
            raise MigrationError(f"migration {self.migration} is {rec.state}; the continuous check needs its "
                                 "changes streaming (after the copy, before complete)")
        result = PassResult(number)
        started = time.monotonic()
        for move, table in self._units(p):
            if not self._walk(p, move, table, result, deadline):
                break
        else:
            result.complete = True
        result.seconds = round(time.monotonic() - started, 3)
        detail = {k: v for k, v in result.to_dict().items() if k != "mismatches"}
        store.record_event(self.migration, "check.pass", **detail,
                           mismatches=[asdict(m) for m in result.mismatches[:self.max_diffs]])
        if result.complete or result.mismatches:
            # a verification like `reshard verify`'s: the cutover's gate reads the last one
            store.record_event(self.migration, "verify", equal=result.equal, mode="continuous", pass_number=number,
                               rows=result.rows, differences={f"{m.move}/{m.table}": [m.key] for m in result.mismatches})
        self.say(f"pass {number}: {result.chunks} chunks, {result.rows:,} rows in {result.seconds:.1f}s, "
                 + ("no divergence" if result.equal else f"{len(result.mismatches)} key(s) diverge")
                 + ("" if result.complete else " (stopped part-way)"))
        return result

    def _walk(self, p: Plan, move: Move, table: str, result: PassResult, deadline: float | None) -> bool:
        """Check one (move, table) chunk by chunk; False when told to stop. One session per
        side for the whole walk (a connection per chunk would cost the source more than the
        reads); a chunk is one statement on each side, and only a chunk whose count or
        checksum differs is compared key by key (in a transaction, for the cursors)."""
        pred = p.predicate_sql(move, table, alias="t")
        active = self.co.store.active()
        config = self.co.config
        with connect(config.cluster(move.source).dsn, f"source cluster {move.source}", autocommit=True) as src, \
                connect(config.cluster(move.target).dsn, f"target cluster {move.target}", autocommit=True) as tgt:
            for c in (src, tgt):
                c.execute(SESSION)
            info = require_table(src, table, move.source)
            columns = [c.name for c in info.copyable]
            lower: tuple | None = None
            while True:
                if self.stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                    return False
                t0 = time.monotonic()
                chunk = source_chunk(src, table, info, columns, pred, lower, self.chunk_rows)
                # a short chunk is the last: open above, so rows past it on the target are covered too
                upper = chunk.last if chunk.rows >= self.chunk_rows else None
                cond = within(info, lower, upper)
                if summary(tgt, table, columns, sql.SQL("{} AND {}").format(pred, cond)) != (chunk.rows, chunk.checksum):
                    self._settle(p, move, table, info, src, tgt, cond, active, result)
                result.chunks += 1
                result.rows += chunk.rows
                if upper is None:
                    return True
                lower = upper
                # throttle: this chunk's rows at the allowed rate, less the time it already took
                wait = chunk.rows / self.max_rows_per_second - (time.monotonic() - t0)
                if wait > 0:
                    self.stop.wait(wait)

    def _settle(self, p: Plan, move: Move, table: str, info: Any, src: psycopg.Connection[Any],
                tgt: psycopg.Connection[Any], cond: sql.Composable, active: Any, result: PassResult) -> None:
        """A chunk whose summaries differ: its keys compared, and differing keys re-checked
        under row locks after catch-up (lag settles; what still differs is divergence)."""
        with src.transaction(), tgt.transaction():  # the keyed comparison's cursors need one
            check: TableCheck = compare(src, tgt, p, move, table, info, self.max_diffs, within=cond)
        if check.candidates:
            result.rechecked_chunks += 1
            recheck(self.co.config, p, check, lambda: self.co.wait(self.migration, timeout=60), 3,
                    self.max_diffs, active[1] if active else None)
        for d in check.differences:
            m = Mismatch(move.id, table, d["key"], d["problem"])
            result.mismatches.append(m)
            self.co.store.record_event(self.migration, "check.mismatch", **asdict(m))
            self.say(f"divergence: {table} key {d['key']} ({move.source} -> {move.target}): {d['problem']}")
