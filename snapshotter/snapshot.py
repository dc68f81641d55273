"""Copy every move's rows from its source into its target at the slot's snapshot.

Per source cluster: install reshard's schema, create the publication, create the
slot with an exported snapshot and record its consistent point, let the caller
register the Debezium connector on that slot, then copy each (move, table) unit in
keyset batches inside the snapshot. A unit larger than a batch is split into key-range
chunks, one per copy worker, recorded on the target before any row moves; every chunk
is copied by a session of its own that imports the same exported snapshot, so one
big table to one target uses as many sessions as a raw COPY pipe per range would.

Resuming: batches commit on the target with their chunk's cursor, so a rerun skips
finished chunks and continues others after their last batch. The first exported snapshot died
with the process that held it, so the rerun copies the rest from a fresh snapshot
(a temporary slot's, at position P2 > P). Those rows are newer than P; the stream
still replays every change after P onto them in per-key order, and each change
carries the full row, so they converge to the source before the stream passes P2.
P2 is recorded as ``resumed_lsn`` on the target for the applier (see cdc_applier).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from psycopg import sql

from reshard.cluster import shard_schema
from reshard.cluster.catalog import TableInfo, check_compatible, check_source, require_table, table_info
from reshard.cluster.replication import ensure_publication, slot_lsn
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.records import MigrationRecord
from reshard.control.store import ControlStore
from reshard.errors import SetupError
from reshard.kafka.streams import forward
from reshard.live_control import LiveControl
from reshard.maps.estimate import move_rows
from reshard.maps.planner import Move, Plan
from reshard.maps.shardmap import table_ident
from reshard.observe.progress import Progress
from reshard.proof.lineage import require_intact
from reshard.snapshotter.copy_writer import Chunk, binary_safe, copy_batch, create_chunks, load_chunks
from reshard.snapshotter.cursor import KeysetCursor
from reshard.snapshotter.resume import chunk_count, source_start
from reshard.snapshotter.slot import ExportedSnapshot, import_snapshot
from reshard.snapshotter.throttle import UNTHROTTLED, CopyThrottle, ThrottleSettings

DEFAULT_BATCH_ROWS = 100_000  # rows per target commit: a crash redoes at most this many per unit
PROGRESS_EVERY_S = 1.0  # copy progress mirrored to the control database at most this often


@dataclass
class CopyUnit:
    move: Move
    table: str
    src_info: TableInfo
    predicate: sql.Composable
    estimate: int


@dataclass
class SnapshotReport:
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0  # the whole snapshot step: publication, slot, connector, copy
    copy_seconds: float = 0.0  # rows moving only: first batch started to last batch committed
    units_copied: int = 0
    units_already_done: int = 0
    resumed: bool = False
    consistent_lsn: dict[str, str] = field(default_factory=dict)
    throttle: dict[str, dict] = field(default_factory=dict)  # per source: the limit at the end, time held back
    tables_created: list[str] = field(default_factory=list)  # "target:table" created from the source's definition
    statements_skipped: list[str] = field(default_factory=list)  # of those tables' indexes/constraints/triggers
    # per source: ms its connector took to confirm a change after the copy (None: over 5 s)
    confirm_ms: dict[str, float | None] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def copy_rows_per_second(self) -> float:
        return self.rows / self.copy_seconds if self.copy_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "rows_copied": self.rows, "bytes_copied": self.bytes, "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second), "copy_seconds": round(self.copy_seconds, 3),
            "copy_rows_per_second": round(self.copy_rows_per_second), "units_copied": self.units_copied,
            "units_already_done": self.units_already_done, "resumed": self.resumed,
            "consistent_lsn": self.consistent_lsn, "throttle": self.throttle,
            "tables_created": self.tables_created, "statements_skipped": self.statements_skipped,
            "confirm_ms": self.confirm_ms,
        }


@dataclass
class Setup:
    units: dict[str, list[CopyUnit]]  # per source cluster
    missing: dict[str, dict[str, str]]  # target -> {table the target lacks: the source to take it from}


def check_setup(config: Config, p: Plan) -> Setup:
    """Everything that can be checked before creating anything: tables, keys, types. A
    moving table a target lacks is not an error: it is listed, to be created from the
    source's definition (snapshotter.target_tables); one it has must match the source.

    Raises SetupError / Unavailable naming the cluster and the table.
    """
    units: dict[str, list[CopyUnit]] = {}
    infos: dict[tuple[str, str], TableInfo] = {}
    for source in p.sources():
        c = config.cluster(source)
        with connect(c.dsn, f"source cluster {source}") as conn:
            level = conn.execute("SHOW wal_level").fetchone()[0]
            if level != "logical":
                raise SetupError(f"cluster {source} has wal_level={level}; logical decoding needs wal_level=logical")
            for move in p.moves_from(source):
                group = p.new.groups[move.group]
                for table in sorted(group.tables):
                    if (source, table) not in infos:
                        info = require_table(conn, table, source)
                        check_source(info, source, group.key_columns(table))
                        infos[(source, table)] = info
                    info = infos[(source, table)]
                    units.setdefault(source, []).append(
                        CopyUnit(move, table, info, p.predicate_sql(move, table), move_rows(conn, p, move, info))
                    )
    missing: dict[str, dict[str, str]] = {}
    for target in p.targets():
        with connect(config.cluster(target).dsn, f"target cluster {target}") as conn:
            for source, us in units.items():
                for u in us:
                    if u.move.target == target:
                        on_target = table_info(conn, u.table)
                        if on_target is None:
                            missing.setdefault(target, {})[u.table] = source
                        else:
                            check_compatible(u.src_info, on_target, source, target)
    return Setup(units, missing)


class Snapshotter:
    def __init__(
        self,
        config: Config,
        store: ControlStore,
        rec: MigrationRecord,
        plan: Plan,
        progress: Progress,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        workers: int = 2,
        throttle: ThrottleSettings = ThrottleSettings(),
    ):
        self.config = config
        self.store = store
        self.rec = rec
        self.plan = plan
        self.progress = progress
        self.batch_rows = batch_rows
        self.workers = workers
        self.throttle_settings = throttle
        self.throttle: CopyThrottle | None = None
        self._lock = threading.Lock()

    def run(self, units: dict[str, list[CopyUnit]], on_slot: Callable[[str, str], None]) -> SnapshotReport:
        """Copy all units; ``on_slot(source, lsn)`` runs once each source's slot exists."""
        report = SnapshotReport()
        started = time.monotonic()
        total = sum(u.estimate for us in units.values() for u in us)
        task = self.progress.task("copy", total=total or None, unit="rows")
        for source in self.plan.sources():
            self._copy_source(source, units.get(source, []), on_slot, report, task)
        task.close()
        report.seconds = time.monotonic() - started
        return report

    def _prepare_source(self, source: str) -> tuple[str, str, bool, str | None]:
        """Schema, heartbeat row and publication on the source; (slot, pub, slot exists, its LSN)."""
        stream = forward(self.rec.name, source)
        slot, pub = stream.slot, stream.publication
        c = self.config.cluster(source)
        with connect(c.dsn, f"source cluster {source}", autocommit=True) as conn:
            shard_schema.install(conn)
            conn.execute(
                "INSERT INTO reshard.heartbeat (migration) VALUES (%s) ON CONFLICT (migration) DO NOTHING",
                (self.rec.name,),
            )
            ensure_publication(conn, pub, self.plan.tables())
            lsn = slot_lsn(conn, slot)
            exists = lsn is not None
        for target in self.plan.targets():
            with connect(self.config.cluster(target).dsn, f"target cluster {target}", autocommit=True) as conn:
                shard_schema.install(conn)
        return slot, pub, exists, lsn

    def _copy_source(self, source: str, units: list[CopyUnit], on_slot: Callable[[str, str], None],
                     report: SnapshotReport, task) -> None:
        slot, pub, exists, slot_lsn = self._prepare_source(source)
        recorded = {s["cluster"]: s for s in self.rec.sources}.get(source)
        pending = [u for u in units if not self._unit_done(u)]
        report.units_already_done += len(units) - len(pending)
        c = self.config.cluster(source)
        if exists or (recorded or {}).get("consistent_lsn"):
            # a rerun: the slot must still be the stream's own (a failover may have lost it)
            require_intact(self.config, self.store, self.rec.name, [forward(self.rec.name, source)])
        start = source_start(self.rec.name, slot, source, slot_exists=exists, slot_lsn=slot_lsn,
                             recorded_lsn=(recorded or {}).get("consistent_lsn"), pending_units=len(pending))
        if start.create_slot:
            snap = ExportedSnapshot(c, slot)
            # the ordering that makes copy and stream meet exactly: slot (and its snapshot)
            # first, position recorded before any row is copied, connector on that slot
            self.store.record_source(self.rec.name, source, slot_name=slot, publication=pub, consistent_lsn=snap.lsn)
            self.store.record_slot_origin(self.rec.name, source, slot, snap.origin.system_id, snap.origin.timeline)
            self.store.record_event(self.rec.name, "slot.created", cluster=source, slot=slot, lsn=snap.lsn)
            self.progress.step(f"{source}: slot {slot} created at {snap.lsn} with an exported snapshot")
            consistent, resumed_lsn = snap.lsn, None
        else:
            consistent = str(start.consistent_lsn)
            self.store.record_source(self.rec.name, source, slot_name=slot, publication=pub, consistent_lsn=consistent)
            snap = None
            resumed_lsn = None
        report.consistent_lsn[source] = consistent
        on_slot(source, consistent)
        if not pending:
            if snap:
                snap.close()
            return
        if start.fresh_snapshot:
            tmp = f"reshard_tmp_{zlib.crc32(slot.encode()):08x}"
            snap = ExportedSnapshot(c, tmp, temporary=True)
            resumed_lsn = snap.lsn
            report.resumed = True
            self.store.record_event(self.rec.name, "copy.resumed", cluster=source, snapshot_lsn=snap.lsn,
                                    pending=[f"{u.move.id}/{u.table}" for u in pending])
            self.progress.step(f"{source}: resuming {len(pending)} unfinished copy unit(s) from a fresh snapshot at {snap.lsn}")
        assert snap is not None  # created above: with the slot, or fresh for a rerun with units left
        # the source's probe baseline is taken now, before this source's copy loads it
        def show(text: str) -> None:
            task.update(extra="" if text == UNTHROTTLED else f"({text})")

        def changed(text: str) -> None:
            show(text)
            self.progress.step(f"{source}: copy {text}")

        def wal_budget(paused: bool, kept: int, budget: int) -> None:  # the exporter's reshard_copy_wal_paused
            self.store.record_event(self.rec.name, "copy.wal_paused" if paused else "copy.wal_resumed",
                                    cluster=source, slot=slot, unconfirmed_bytes=kept, budget_bytes=budget)

        self.throttle = CopyThrottle(self.throttle_settings, c.dsn, on_change=changed,
                                     live=LiveControl(self.store, self.rec.name), slot=slot, on_wal_budget=wal_budget)
        if self.throttle_settings.max_rows_per_s:
            with connect(c.dsn, f"source cluster {source}", autocommit=True) as conn:
                self.throttle.hint_width(conn, sorted({table_ident(u.table).as_string(conn) for u in pending}))
        show(self.throttle.describe())
        if self.throttle.reason:  # the adaptive throttle's first judgement, and its budget
            self.progress.step(f"{source}: copy {self.throttle.describe()} ({self.throttle.reason}; latency budget "
                               f"{self.throttle.settings.max_latency_impact_ms:g} ms)")
        copy_started = time.monotonic()
        try:
            work = [(u, progress, chunk) for u in pending
                    for progress in [self._chunks(u, snapshot_lsn=consistent, resumed_lsn=resumed_lsn)]
                    for chunk in progress.chunks if not chunk.done]
            with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
                futures = [
                    pool.submit(self._copy_chunk, u, progress, chunk, snap.snapshot_name, resumed_lsn, report, task)
                    for u, progress, chunk in work
                ]
                for f in futures:
                    f.result()
            report.copy_seconds += time.monotonic() - copy_started
        finally:
            self.throttle.close()
            report.throttle[source] = self.throttle.summary()
            snap.close()

    def _unit_done(self, u: CopyUnit) -> bool:
        with connect(self.config.cluster(u.move.target).dsn, f"target cluster {u.move.target}") as tgt:
            exists = tgt.execute("SELECT to_regclass('reshard.copy_cursor')").fetchone()[0]
            if exists is None:
                return False
            chunks = load_chunks(tgt, self.rec.name, u.move.id, u.table)
            return bool(chunks) and all(c.done for c in chunks)

    def _chunks(self, u: CopyUnit, *, snapshot_lsn: str, resumed_lsn: str | None) -> _UnitProgress:
        """The unit's chunks: those recorded on the target, or (first time) a new split of
        its key range into one chunk per copy worker, at keys sampled from the source.
        Any keys split the range exactly (chunks are ``(lower, upper]``), so the sample
        need not come from the snapshot, only be ordered."""
        src_c, tgt_c = self.config.cluster(u.move.source), self.config.cluster(u.move.target)
        with connect(tgt_c.dsn, f"target cluster {tgt_c.name}", autocommit=True) as tgt:
            chunks = load_chunks(tgt, self.rec.name, u.move.id, u.table)
            if not chunks:
                clash = tgt.execute(sql.SQL("SELECT 1 FROM {} WHERE {} LIMIT 1").format(
                    table_ident(u.table), u.predicate)).fetchone()
                if clash:
                    raise SetupError(
                        f"{tgt_c.name} already holds rows of {u.table} in the range this move copies "
                        f"({u.move.summary}); reshard will not overwrite them. Empty them or abort the migration."
                    )
                parts = chunk_count(u.estimate, self.workers, self.batch_rows)
                bounds: list[list[str]] = []
                if parts > 1:
                    with connect(src_c.dsn, f"source cluster {src_c.name}", autocommit=True) as src:
                        kc = KeysetCursor(u.src_info, u.predicate)
                        bounds = kc.uppers(src, -(-u.estimate // parts))[: parts - 1]
                chunks = create_chunks(tgt, self.rec.name, u.move.id, u.table, bounds, snapshot_lsn, resumed_lsn)
        return _UnitProgress(chunks, snapshot_lsn, sum(c.rows_copied for c in chunks),
                             sum(c.bytes_copied for c in chunks), sum(not c.done for c in chunks))

    def _copy_chunk(self, u: CopyUnit, progress: _UnitProgress, chunk: Chunk, snapshot_name: str,
                    resumed_lsn: str | None, report: SnapshotReport, task) -> None:
        src_c = self.config.cluster(u.move.source)
        tgt_c = self.config.cluster(u.move.target)
        with connect(src_c.dsn, f"source cluster {src_c.name}") as src, \
                connect(tgt_c.dsn, f"target cluster {tgt_c.name}", autocommit=True) as tgt:
            shard_schema.writer_session(tgt)
            totals = (chunk.rows_copied, chunk.bytes_copied)
            resumed_lsn = resumed_lsn if resumed_lsn is not None else chunk.resumed_lsn
            src.autocommit = True
            if self.throttle is not None:
                self.throttle.own(src.info.backend_pid)  # the copy's own session is not the application
            import_snapshot(src, snapshot_name)
            kc = KeysetCursor(u.src_info, u.predicate, after=chunk.cursor, until=chunk.upper)
            columns = [col.name for col in u.src_info.copyable]
            binary = binary_safe(src, u.table, columns)
            for upper in [*kc.uppers(src, self.batch_rows), None]:
                res = copy_batch(
                    src, tgt, kc, upper, columns, migration=self.rec.name, move_id=u.move.id, chunk=chunk.index,
                    resumed_lsn=resumed_lsn, totals=totals, binary=binary, throttle=self.throttle,
                )
                totals = (totals[0] + res.rows, totals[1] + res.bytes)
                with self._lock:
                    report.rows += res.rows
                    report.bytes += res.bytes
                    progress.rows += res.rows
                    progress.bytes += res.bytes
                    progress.left -= upper is None
                    unit_done = progress.left == 0
                    mirror = unit_done or time.monotonic() - progress.reported >= PROGRESS_EVERY_S
                    if mirror:
                        progress.reported = time.monotonic()
                    rows, nbytes = progress.rows, progress.bytes
                task.advance(res.rows)
                if self.throttle is not None and self.throttle.limit() is not None:
                    task.update(extra=f"({self.throttle.describe()})")
                if mirror:
                    # status reads this mirror; the chunks' cursors on the target are the durable fact
                    self.store.record_copy(
                        self.rec.name, u.move.id, u.table, rows_copied=rows, bytes_copied=nbytes,
                        rows_estimate=u.estimate, snapshot_lsn=progress.snapshot_lsn,
                        done=unit_done,
                        throttle=None if unit_done or self.throttle is None else self.throttle.describe(),
                    )
            src.execute("COMMIT")
            if unit_done:
                with self._lock:
                    report.units_copied += 1


@dataclass
class _UnitProgress:
    """A unit's totals across its chunks, shared by the sessions copying them."""
    chunks: list[Chunk]
    snapshot_lsn: str
    rows: int
    bytes: int
    left: int  # chunks not done yet
    reported: float = 0.0  # when the control database's mirror was last updated
