"""Apply change events to one target cluster, idempotently, a batch at a time, in sets.

A batch is reduced to the newest change per key first (a partial update, which lacks
its unchanged TOAST columns, borrows them from an older full change of the same key
in the batch). Each table's share is then shipped with one COPY into a session-local
staging table and applied by a handful of set-based statements, in one transaction:

1. the per-key position guard: ``reshard.applied_rows`` advances for the keys whose
   staged change is newer than the position stored, and every other staged change
   (a replay, a reordered older change) is dropped from the stage;
2. one DELETE, one INSERT … ON CONFLICT for full rows, one UPDATE per shape of partial
   rows (which must find their row: a missing one pauses, see below);
3. the Kafka offsets the batch covers (``reshard.applied_offsets``).

So a change applied twice, or a stale change arriving after a newer one, changes
nothing, and positions commit with the rows they describe (invariant 2), at a cost of
a few round trips per table and batch instead of one per event (invariant 10).

Change LSNs order the changes of one key: a second transaction cannot change a row
before the first one that changed it commits (row locks), so its change comes later
in the WAL. They do not order changes across keys, and nothing here needs that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql

from reshard.cdc_applier.decode import ChangeEvent
from reshard.cluster.catalog import TableInfo
from reshard.cluster.shard_schema import pk_text_sql
from reshard.errors import MigrationPaused, SchemaMismatch
from reshard.failpoints import failpoint

FULL, PARTIAL, DELETE = "u", "p", "d"  # what a staged row does to the target row


@dataclass(slots=True)
class Routed:
    """An event bound for a target, with the Kafka position it came from."""

    event: ChangeEvent
    topic: str
    partition: int
    offset: int
    source: str


@dataclass
class ApplyStats:
    applied: int = 0
    skipped_stale: int = 0  # replays, reordered older changes, changes a newer one in the batch replaced
    superseded: int = 0  # partial updates of rows a resumed copy took after them
    rejected: list[tuple[Routed, str]] = field(default_factory=list)


def _hashable(v: Any) -> Any:
    return v if isinstance(v, (int, str, float, bool, type(None))) else json.dumps(v, sort_keys=True, default=str)


def newest_per_key(items: list[Routed], pk_of: dict[str, tuple[str, ...]]) -> tuple[list[Routed], int]:
    """The batch reduced to the newest change of each (table, key), in arrival order of
    the survivors; returns them and how many changes they replaced.

    A partial update (unchanged TOAST columns not sent) that follows a full change of
    the same key in the batch takes those columns from it, so it stays applicable even
    if the row does not exist on the target yet."""
    latest: dict[tuple, Routed] = {}
    for r in items:
        ev = r.event
        k = (ev.table, *(_hashable(ev.key.get(c)) for c in pk_of.get(ev.table, ())))
        prev = latest.get(k)
        if prev is not None and prev.event.lsn > ev.lsn:
            continue  # an older change arriving late: the newer one wins
        if prev is not None and ev.unavailable and ev.row is not None and prev.event.row is not None:
            carried = {c: prev.event.row[c] for c in ev.unavailable if c in prev.event.row}
            if carried:
                ev = replace(ev, row={**ev.row, **carried}, unavailable=ev.unavailable - frozenset(carried))
                r = replace(r, event=ev)
        latest.pop(k, None)  # re-insert: survivors keep the order of their newest change
        latest[k] = r
    return list(latest.values()), len(items) - len(latest)


class TableWriter:
    """Staging table and statements for one table on one target, built once per session."""

    def __init__(self, conn: psycopg.Connection[Any], info: TableInfo, migration: str, resumed_lsn: int | None,
                 number: int, renames: dict[str, str] | None = None, dropped: frozenset[str] = frozenset()):
        self.info = info
        self.renames = renames or {}  # a column renamed at some source: either name -> the other
        self.dropped = dropped  # columns a source dropped: rows of the old shape still carry them
        self._fits: dict[tuple[str, ...], dict[str, str | None] | None] = {}
        self.migration = migration
        self.resumed_lsn = resumed_lsn
        self.cols = {c.name: c for c in info.copyable}
        self.colset = frozenset(self.cols)
        self.names = list(self.cols)
        self.pk = list(info.pk)
        self.stage = sql.Identifier(f"reshard_stage_{number}")
        self.target = sql.Identifier(*info.name.split(".", 1))
        self._checked: dict[tuple[str, ...], bool] = {}
        self._shapes: dict[tuple[str, ...], int] = {}  # partial rows: shapes 1, 2, ...
        self._update_sql: dict[int, sql.Composed] = {}
        self._full_shapes: dict[tuple[str, ...], int] = {}  # whole rows lacking optional columns: -1, -2, ...
        self._upsert_sql: dict[int, sql.Composed] = {}
        defs = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
                                  for c in info.copyable)
        # session-local, emptied at every commit: a rolled-back batch leaves nothing behind
        conn.execute(sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (__op \"char\" NOT NULL, __lsn bigint NOT NULL, "
            "__shape integer NOT NULL, {}) ON COMMIT DELETE ROWS").format(self.stage, defs))
        self._build()

    def _on_pk(self, left: str, right: str) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(sql.Identifier(left), sql.Identifier(c), sql.Identifier(right),
                                            sql.Identifier(c)) for c in self.pk)

    def _build(self) -> None:
        cols = sql.SQL(", ").join(map(sql.Identifier, self.names))
        self.copy_sql = sql.SQL("COPY {} (__op, __lsn, __shape, {}) FROM STDIN").format(self.stage, cols)
        self.guard_sql = sql.SQL(
            "WITH v AS (INSERT INTO reshard.applied_rows AS a (migration, tbl, pk, lsn, deleted) "
            "SELECT %(m)s, %(t)s, {pk}, s.__lsn, s.__op = 'd' FROM {stage} s "
            "ON CONFLICT (migration, tbl, pk) DO UPDATE SET lsn = EXCLUDED.lsn, deleted = EXCLUDED.deleted "
            "WHERE a.lsn < EXCLUDED.lsn RETURNING a.pk) "
            "DELETE FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM v WHERE v.pk = {pk})"
        ).format(pk=pk_text_sql(self.pk, "s"), stage=self.stage)
        self.clear_sql = sql.SQL("DELETE FROM {}").format(self.stage)
        self.delete_sql = sql.SQL("DELETE FROM {} t USING {} s WHERE s.__op = 'd' AND {}").format(
            self.target, self.stage, self._on_pk("t", "s"))
        self._upsert_sql[0] = self._upsert(tuple(self.names), 0)

    def _upsert(self, present: tuple[str, ...], shape: int) -> sql.Composed:
        cols = sql.SQL(", ").join(map(sql.Identifier, present))
        sets = [sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                for c in present if c not in self.pk]
        override = sql.SQL(" OVERRIDING SYSTEM VALUE" if any(
            c.identity == "a" and c.name in present for c in self.info.copyable) else "")
        return sql.SQL(
            "INSERT INTO {t} ({cols}){override} SELECT {cols} FROM {stage} WHERE __op = 'u' AND __shape = {n} "
            "ON CONFLICT ({pk}) DO {action}"
        ).format(t=self.target, cols=cols, override=override, stage=self.stage, n=sql.Literal(shape),
                 pk=sql.SQL(", ").join(map(sql.Identifier, self.pk)),
                 action=sql.SQL("UPDATE SET ") + sql.SQL(", ").join(sets) if sets else sql.SQL("NOTHING"))

    def fit(self, ev: ChangeEvent) -> ChangeEvent:
        """The event in this destination's column names while a schema change is under way
        (reshard/ddl/changes.py ``tolerance``): a column this table has under its other name
        is renamed, one a source dropped and this table no longer has is left out. Decided
        once per event shape; an event of this table's own shape passes untouched."""
        if ev.columns not in self._fits:
            self._fits[ev.columns] = None if set(ev.columns) <= self.colset else {c: self._fit_name(c) for c in ev.columns}
        fit = self._fits[ev.columns]
        if fit is None:
            return ev
        row = None if ev.row is None else {n: v for c, v in ev.row.items() if (n := fit.get(c, c)) is not None}
        return replace(ev, row=row, columns=tuple(n for c in ev.columns if (n := fit[c]) is not None),
                       unavailable=frozenset(n for c in ev.unavailable if (n := fit.get(c)) is not None))

    def _fit_name(self, c: str) -> str | None:
        """An event column's name here: itself, its other name, or None (a column a source dropped)."""
        if c in self.colset:
            return c
        other = self.renames.get(c)
        if other in self.colset:
            return other
        return None if c in self.dropped else c  # a column unknown here stays, and check_columns says so

    def check_columns(self, ev: ChangeEvent, source: str, target: str) -> None:
        """Events may lack target columns that are nullable or defaulted (changes decoded
        before the column was added, as PostgreSQL's logical replication allows); any other
        difference is schema drift, which pauses the applier naming the side that changed."""
        ok = self._checked.get(ev.columns)
        if ok is None:
            present = frozenset(ev.columns)
            ok = self._checked[ev.columns] = present <= self.colset and all(
                self.cols[c].optional for c in self.colset - present)
        if not ok:
            extra = sorted(set(ev.columns) - self.colset)
            required = sorted(c for c in self.colset - set(ev.columns) if not self.cols[c].optional)
            parts = []
            if extra:
                parts.append(f"the source {source} has column(s) {', '.join(extra)} that {target} lacks: "
                             f"apply the same DDL on {target}")
            if required:
                parts.append(f"{target} has NOT NULL column(s) {', '.join(required)} without a default that "
                             f"changes from {source} do not carry: add them on {source}, or give them a default")
            raise SchemaMismatch(f"schema drift on {ev.table}: {'; '.join(parts)}; then run the applier again.")

    def _value(self, name: str, v: Any) -> Any:
        if v is None:
            return None
        base = self.cols[name].base_type
        if base == "bytea" and isinstance(v, str):
            return bytes.fromhex(v[2:] if v.startswith("\\x") else v)
        if base in ("json", "jsonb") and isinstance(v, (dict, list)):
            return json.dumps(v)
        return v

    def _shape(self, ev: ChangeEvent) -> int:
        """Partial updates are grouped by the columns they carry: one UPDATE per shape."""
        present = tuple(c for c in self.names if c in ev.row and c not in self.pk)  # type: ignore[operator]
        n = self._shapes.get(present)
        if n is None:
            n = self._shapes[present] = len(self._shapes) + 1
            sets = sql.SQL(", ").join(
                sql.SQL("{} = s.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in present
            ) if present else sql.SQL("{} = t.{}").format(sql.Identifier(self.pk[0]), sql.Identifier(self.pk[0]))
            key = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in self.pk)
            self._update_sql[n] = sql.SQL(
                "WITH w AS (UPDATE {t} t SET {sets} FROM {stage} s WHERE s.__op = 'p' AND s.__shape = {n} "
                "AND {on} RETURNING {tkey}) SELECT {key}, s.__lsn FROM {stage} s WHERE s.__op = 'p' "
                "AND s.__shape = {n} AND NOT EXISTS (SELECT 1 FROM w WHERE {won})"
            ).format(t=self.target, sets=sets, stage=self.stage, n=sql.Literal(n), on=self._on_pk("t", "s"),
                     tkey=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in self.pk),
                     key=key, won=self._on_pk("w", "s"))
        return n

    def _full_shape(self, ev: ChangeEvent) -> int:
        """Full rows that lack some (optional) columns are inserted without them, so their
        defaults apply, and update only the columns they carry: one upsert per shape."""
        if len(ev.columns) == len(self.names):
            return 0
        present = tuple(c for c in self.names if c in ev.row)  # type: ignore[operator]
        n = self._full_shapes.get(present)
        if n is None:
            n = self._full_shapes[present] = -(len(self._full_shapes) + 1)
            self._upsert_sql[n] = self._upsert(present, n)
        return n

    def staged_row(self, ev: ChangeEvent) -> tuple[list[Any], int]:
        """(the COPY row, its shape: 0 for whole rows) for one change."""
        if ev.op == "d":
            vals = {c: ev.key.get(c) for c in self.pk}
            return [DELETE, ev.lsn, 0, *(self._value(c, vals.get(c)) for c in self.names)], 0
        row = ev.row or {}
        if not ev.unavailable:
            shape = self._full_shape(ev)
            return [FULL, ev.lsn, shape, *(self._value(c, row.get(c)) for c in self.names)], shape
        # unchanged TOAST columns were not sent: update only what was, never the placeholder
        shape = self._shape(ev)
        return [PARTIAL, ev.lsn, shape, *(self._value(c, row.get(c)) for c in self.names)], shape

    def apply(self, cur: psycopg.Cursor, items: list[Routed], stats: ApplyStats, cluster: str) -> None:
        """Stage and apply ``items`` (at most one per key) inside the caller's transaction."""
        shapes: set[int] = set()
        full: set[int] = set()
        with cur.copy(self.copy_sql) as cp:
            for r in items:
                row, shape = self.staged_row(r.event)
                if shape > 0:
                    shapes.add(shape)
                elif row[0] == FULL:
                    full.add(shape)
                cp.write_row(row)
        cur.execute(self.guard_sql, {"m": self.migration, "t": self.info.name})
        stale = cur.rowcount
        stats.skipped_stale += stale
        applied = len(items) - stale
        cur.execute(self.delete_sql)
        for shape in sorted(full, reverse=True):
            cur.execute(self._upsert_sql[shape])
        for shape in sorted(shapes):
            cur.execute(self._update_sql[shape])
            for *key, lsn in cur.fetchall():
                if self.resumed_lsn is not None and lsn < self.resumed_lsn:
                    # the row was copied from a later snapshot that no longer had it: a later
                    # delete (still to be applied) removed it. See snapshotter/snapshot.py.
                    stats.superseded += 1
                    applied -= 1
                    continue
                raise MigrationPaused(
                    f"update of {self.info.name} key {dict(zip(self.pk, key))} (lsn {lsn}) sent only some columns "
                    f"(unchanged TOAST values were not sent) but the row is missing on {cluster}; reshard will "
                    "not invent the missing values. Set REPLICA IDENTITY FULL on the source table or re-copy the "
                    "row, then rerun the applier."
                )
        stats.applied += applied
        cur.execute(self.clear_sql)  # a per-event retry stages again in the same transaction


class TargetWriter:
    """One connection to one target cluster; applies batches and records offsets."""

    def __init__(self, conn: psycopg.Connection[Any], cluster: str, migration: str,
                 tables: dict[str, TableInfo], resumed_lsn: dict[str, int],
                 renames: dict[str, dict[str, str]] | None = None, dropped: dict[str, set[str]] | None = None):
        self.conn = conn
        self.cluster = cluster
        self.migration = migration
        renames, dropped = renames or {}, dropped or {}
        self.writers = {t: TableWriter(conn, info, migration, resumed_lsn.get(t), i, renames.get(t),
                                       frozenset(dropped.get(t, ())))
                        for i, (t, info) in enumerate(sorted(tables.items()))}
        self.pk_of = {t: tuple(info.pk) for t, info in tables.items()}

    def _run(self, items: list[Routed], stats: ApplyStats) -> None:
        by_table: dict[str, list[Routed]] = {}
        for r in items:
            w = self.writers.get(r.event.table)
            if w is None:
                raise SchemaMismatch(f"{r.event.table} is not a table of this migration on {self.cluster}")
            fitted = w.fit(r.event)
            if fitted is not r.event:
                r = replace(r, event=fitted)
            w.check_columns(r.event, r.source, self.cluster)
            by_table.setdefault(r.event.table, []).append(r)
        cur = self.conn.cursor()
        for table, rs in by_table.items():
            survivors, replaced = newest_per_key(rs, self.pk_of)
            stats.skipped_stale += replaced
            self.writers[table].apply(cur, survivors, stats, self.cluster)

    def _record_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        if not offsets:
            return
        topics, parts, nexts = zip(*((t, p, o) for (t, p), o in offsets.items()))
        self.conn.execute(
            "INSERT INTO reshard.applied_offsets (migration, topic, kpartition, next_offset, applied_at) "
            "SELECT %s, t, p, o, now() FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS x(t, p, o) "
            "ON CONFLICT (migration, topic, kpartition) DO UPDATE SET "
            "next_offset = greatest(reshard.applied_offsets.next_offset, EXCLUDED.next_offset), applied_at = now()",
            (self.migration, list(topics), list(parts), list(nexts)),
        )

    def apply(self, items: list[Routed], offsets: dict[tuple[str, int], int]) -> ApplyStats:
        """Apply in one transaction. If a row is rejected by the server (a value it cannot
        take, a constraint), redo the batch event by event, in order, so that only the
        offending events are set aside (returned in ``rejected``, for the dead-letter topic)."""
        stats = ApplyStats()
        try:
            with self.conn.transaction():
                self._run(items, stats)
                self._record_offsets(offsets)
                failpoint("apply_batch", "staged")
            failpoint("apply_batch", "committed")
            return stats
        except (pgerr.UndefinedColumn, pgerr.UndefinedTable) as exc:
            raise SchemaMismatch(f"schema drift on {self.cluster}: its tables changed under the applier "
                                 f"({str(exc).strip().splitlines()[0]}); apply the same DDL on every cluster of the "
                                 "migration, then run the applier again") from None
        except (pgerr.DataError, pgerr.IntegrityError):
            pass
        stats = ApplyStats()
        with self.conn.transaction():
            for r in items:
                try:
                    with self.conn.transaction():
                        self._run([r], stats)
                except (pgerr.DataError, pgerr.IntegrityError) as exc:
                    stats.rejected.append((r, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"))
            self._record_offsets(offsets)
        return stats
