"""Apply change events to one target cluster, idempotently, in one transaction.

Each event is one statement. Its first part records the key's change position in
``reshard.applied_rows`` only if it is newer than the position already there; its
second part changes the row only if the first did. So an event applied twice, or
a stale event arriving after a newer one, changes nothing, and the position commits
with the row it describes. The Kafka offsets the batch covers are recorded in the
same transaction (``reshard.applied_offsets``).

Change LSNs order the changes of one key: a second transaction cannot change a row
before the first one that changed it commits (row locks), so its change comes later
in the WAL. They do not order changes across keys, and nothing here needs that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pgerr

from reshard.catalog import Column, TableInfo
from reshard.errors import MigrationPaused, SchemaMismatch
from reshard.shardmap import qualified, quote_ident
from cdc_applier.decode import ChangeEvent


@dataclass(frozen=True)
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
    skipped_stale: int = 0  # replays and reordered older changes: no effect, by design
    superseded: int = 0  # partial updates of rows a resumed copy took after them
    rejected: list[tuple[Routed, str]] = field(default_factory=list)



VERSION_CTE = (
    "WITH v AS (INSERT INTO reshard.applied_rows AS a (migration, tbl, pk, lsn, deleted) "
    "VALUES (%s, %s, %s, %s, {deleted}) ON CONFLICT (migration, tbl, pk) DO UPDATE "
    "SET lsn = EXCLUDED.lsn, deleted = EXCLUDED.deleted WHERE a.lsn < EXCLUDED.lsn RETURNING 1)"
)


class TableWriter:
    """Statements for one table on one target, built once from its catalog entry."""

    def __init__(self, info: TableInfo, migration: str, resumed_lsn: int | None):
        self.info = info
        self.migration = migration
        self.resumed_lsn = resumed_lsn
        self.cols = {c.name: c for c in info.copyable}
        self.colset = frozenset(self.cols)
        self.pk = list(info.pk)
        self.identity_always = any(c.identity == "a" for c in info.copyable)
        self._sql: dict[tuple, str] = {}

    def _param(self, col: Column) -> str:
        return f"%s::{col.base_type}"

    def _pk_where(self) -> str:
        return " AND ".join(f"{quote_ident(c)} = {self._param(self.info.column(c))}" for c in self.pk)

    def pk_text(self, ev: ChangeEvent) -> str:
        return json.dumps([ev.key.get(c) for c in self.pk], separators=(",", ":"), default=str)

    def value(self, col: Column, v: Any) -> Any:
        if v is not None and col.base_type == "bytea" and isinstance(v, str):
            return bytes.fromhex(v[2:] if v.startswith("\\x") else v)
        if isinstance(v, (dict, list)) and col.base_type in ("json", "jsonb"):
            return json.dumps(v)
        return v

    def check_columns(self, ev: ChangeEvent, source: str, target: str) -> None:
        if frozenset(ev.columns) != self.colset:
            extra = sorted(set(ev.columns) - self.colset)
            missing = sorted(self.colset - set(ev.columns))
            raise SchemaMismatch(
                f"schema drift on {ev.table}: the source {source} now has "
                f"{'extra column(s) ' + ', '.join(extra) if extra else ''}"
                f"{'; ' if extra and missing else ''}"
                f"{'no column(s) ' + ', '.join(missing) if missing else ''} compared with {target}. "
                "Apply the same DDL on the targets, then run the applier again."
            )

    def statement(self, ev: ChangeEvent) -> tuple[str, list[Any], str]:
        """(sql, params, kind) for one event; kind is 'upsert', 'update' or 'delete'."""
        head = [self.migration, self.info.name, self.pk_text(ev), ev.lsn]
        pk_params = [ev.key.get(c) for c in self.pk]
        if ev.op == "d":
            sql = self._sql.get(("d",))
            if sql is None:
                sql = (
                    VERSION_CTE.format(deleted="true")
                    + f", w AS (DELETE FROM {qualified(self.info.name)} WHERE {self._pk_where()} "
                    "AND EXISTS (SELECT 1 FROM v) RETURNING 1) SELECT (SELECT count(*) FROM v), (SELECT count(*) FROM w)"
                )
                self._sql[("d",)] = sql
            return sql, head + pk_params, "delete"
        assert ev.row is not None
        if not ev.unavailable:
            names = [c for c in self.cols if c in ev.row]
            cache_key = ("u", tuple(names))
            sql = self._sql.get(cache_key)
            if sql is None:
                col_list = ", ".join(quote_ident(c) for c in names)
                values = ", ".join(self._param(self.cols[c]) for c in names)
                sets = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in names if c not in self.pk)
                conflict = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
                override = " OVERRIDING SYSTEM VALUE" if self.identity_always else ""
                sql = (
                    VERSION_CTE.format(deleted="false")
                    + f", w AS (INSERT INTO {qualified(self.info.name)} ({col_list}){override} "
                    f"SELECT {values} WHERE EXISTS (SELECT 1 FROM v) "
                    f"ON CONFLICT ({', '.join(quote_ident(c) for c in self.pk)}) {conflict} RETURNING 1) "
                    "SELECT (SELECT count(*) FROM v), (SELECT count(*) FROM w)"
                )
                self._sql[cache_key] = sql
            return sql, head + [self.value(self.cols[c], ev.row[c]) for c in names], "upsert"
        # unchanged TOAST columns were not sent: update only what was, never the placeholder
        names = [c for c in self.cols if c in ev.row and c not in self.pk]
        cache_key = ("p", tuple(names))
        sql = self._sql.get(cache_key)
        if sql is None:
            sets = ", ".join(f"{quote_ident(c)} = {self._param(self.cols[c])}" for c in names) or (
                f"{quote_ident(self.pk[0])} = {quote_ident(self.pk[0])}"
            )
            sql = (
                VERSION_CTE.format(deleted="false")
                + f", w AS (UPDATE {qualified(self.info.name)} SET {sets} WHERE {self._pk_where()} "
                "AND EXISTS (SELECT 1 FROM v) RETURNING 1) SELECT (SELECT count(*) FROM v), (SELECT count(*) FROM w)"
            )
            self._sql[cache_key] = sql
        return sql, head + [self.value(self.cols[c], ev.row[c]) for c in names] + pk_params, "update"


class TargetWriter:
    """One connection to one target cluster; applies batches and records offsets."""

    def __init__(self, conn: psycopg.Connection, cluster: str, migration: str,
                 tables: dict[str, TableInfo], resumed_lsn: dict[str, int]):
        self.conn = conn
        self.cluster = cluster
        self.migration = migration
        self.writers = {t: TableWriter(info, migration, resumed_lsn.get(t)) for t, info in tables.items()}

    def _run(self, items: list[Routed], stats: ApplyStats) -> None:
        cur = self.conn.cursor()
        for r in items:
            ev = r.event
            w = self.writers.get(ev.table)
            if w is None:
                raise SchemaMismatch(f"{ev.table} is not a table of this migration on {self.cluster}")
            w.check_columns(ev, r.source, self.cluster)
            sql, params, kind = w.statement(ev)
            cur.execute(sql, params)
            versioned, changed = cur.fetchone()
            if not versioned:
                stats.skipped_stale += 1
            elif kind == "update" and not changed:
                if w.resumed_lsn is not None and ev.lsn < w.resumed_lsn:
                    # the row was copied from a later snapshot that no longer had it: a later
                    # delete (still to be applied) removed it. See snapshotter/snapshot.py.
                    stats.superseded += 1
                else:
                    raise MigrationPaused(
                        f"update of {ev.table} key {ev.key} (lsn {ev.lsn}) sent only some columns "
                        f"(unchanged TOAST: {', '.join(sorted(ev.unavailable))}) but the row is missing on "
                        f"{self.cluster}; reshard will not invent the missing values. Set REPLICA IDENTITY FULL "
                        "on the source table or re-copy the row, then rerun the applier."
                    )
            else:
                stats.applied += 1

    def _record_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        if not offsets:
            return
        self.conn.cursor().executemany(
            "INSERT INTO reshard.applied_offsets (migration, topic, kpartition, next_offset, applied_at) "
            "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (migration, topic, kpartition) DO UPDATE SET "
            "next_offset = greatest(reshard.applied_offsets.next_offset, EXCLUDED.next_offset), applied_at = now()",
            [(self.migration, t, p, o) for (t, p), o in offsets.items()],
        )

    def apply(self, items: list[Routed], offsets: dict[tuple[str, int], int]) -> ApplyStats:
        """Apply in order in one transaction. If a row is rejected by the server (a value
        it cannot take, a constraint), redo the batch event by event so that only the
        offending events are set aside (returned in ``rejected``, for the dead-letter topic)."""
        stats = ApplyStats()
        try:
            with self.conn.transaction():
                self._run(items, stats)
                self._record_offsets(offsets)
            return stats
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
