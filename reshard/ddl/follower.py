"""Places the schema changes a migration's streaming clusters logged on their destinations.

It runs beside the applier (a thread of ``reshard apply``; the applier also calls ``sync``
when a row does not fit its destination, before calling it drift). Each round it:

1. reads new entries of each stream cluster's ``reshard.ddl_log`` (reshard/ddl/capture.py),
   turns each into ops (reshard/ddl/changes.py), and records them with a *pass mark*: a WAL
   position on that cluster read after the change committed, with a heartbeat write after it;
2. applies EARLY ops on every destination the cluster feeds at once;
3. applies a BARRIER op on a destination once every stream feeding it that table has
   brought the same op and *passed* it: the stream's slot confirmed the pass mark (so
   everything before the change is in Kafka), and then the applier group's committed
   offsets reached the topics' end offsets read after that (so it is applied) — the
   catch-up proof's steps (reshard/proof/catchup.py), taken one poll at a time;
4. pauses the applier (exit 5) on a change the policy will not place, naming it.

An op is applied only when the destination's shape says it is not in effect yet, and its
application is recorded with the positions of the changes that brought it; so a crash
between two destinations, or the same statement from several sources, applies it once per
destination. Column changes are made while the applier's writers hold no batch (``lock``),
and the writers reload the table afterwards (``generation``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from reshard.cluster.catalog import require_table
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.records import MigrationRecord
from reshard.control.store import ControlStore
from reshard.ddl import capture
from reshard.ddl.changes import Op, Phase, ops, tolerance
from reshard.errors import MigrationPaused
from reshard.failpoints import failpoint
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.streams import Direction, Stream
from reshard.maps.planner import Plan
from reshard.proof.catchup import applier_group, mark_positions

log = logging.getLogger("reshard.ddl.follower")
FOLLOW_EVERY_S = 2.0
# a destination's DDL waits this long for its table lock, then is tried again next round: a DDL
# waiting in the lock queue holds up every later query on the table, the application's too
LOCK_TIMEOUT_MS = 1000
POLICIES = ("apply", "pause", "ignore")


@dataclass
class _Passage:
    """Where a change's passage proof stands: the end offsets read once its mark was confirmed."""

    ends: dict[tuple[str, int], int] | None = None


def way_on(cluster: str, entry_id: int, migration: str) -> str:
    return (f"apply the equivalent change on each destination by hand, then `reshard ddl resolve {migration} "
            f"{cluster} {entry_id}` and rerun `reshard apply {migration}`")


def _moves_of(plan: Plan, table: str) -> list:
    return [m for m in plan.moves if table in plan.new.groups[m.group].tables]


def destinations(plan: Plan, direction: str, cluster: str, table: str) -> list[str]:
    """Where ``cluster``'s changes of ``table`` are applied in ``direction``."""
    if direction == Direction.FORWARD:
        return sorted({m.target for m in _moves_of(plan, table) if m.source == cluster})
    return sorted({m.source for m in _moves_of(plan, table) if m.target == cluster})


def feeders(plan: Plan, direction: str, destination: str, table: str) -> list[str]:
    """The clusters whose changes of ``table`` reach ``destination`` in ``direction``."""
    if direction == Direction.FORWARD:
        return sorted({m.source for m in _moves_of(plan, table) if m.target == destination})
    return sorted({m.target for m in _moves_of(plan, table) if m.source == destination})


class DdlFollower:
    def __init__(self, config: Config, store: ControlStore, rec: MigrationRecord, plan: Plan,
                 streams: list[Stream], every_s: float = FOLLOW_EVERY_S):
        self.config = config
        self.store = store
        self.migration = rec.name
        self.plan = plan
        self.streams = list(streams)
        self.every_s = every_s
        self.lock = threading.Lock()  # held by the applier around a batch, here around a column change
        self.generation = 0  # moves when a destination's columns (or what rows may carry) changed
        self.paused: MigrationPaused | None = None
        self.renames: dict[str, dict[str, dict[str, str]]] = {}  # direction -> table -> column -> column
        self.dropped: dict[str, dict[str, set[str]]] = {}  # direction -> table -> columns leaving
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._passage: dict[tuple[str, str, int], _Passage] = {}
        self._sync = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reshard-ddl-follower", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> DdlFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                conn.close()
        self._conns = {}

    def follow(self, streams: list[Stream]) -> None:
        """The streams the applier consumes now (reverse ones come with a cutover)."""
        self.streams = list(streams)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every_s):
                self.sync()
        finally:
            self.store.close()  # this thread's control session, when the store keeps one per thread

    def sync(self) -> None:
        """One round; never raises (said, and tried again next round)."""
        with self._sync:
            try:
                self._round()
            except Exception as exc:
                log.warning("schema changes: %s; trying again in %.0fs", exc, self.every_s)
                for cluster, conn in list(self._conns.items()):
                    if conn.closed or conn.broken:
                        del self._conns[cluster]

    def tolerance(self, direction: str) -> tuple[dict[str, dict[str, str]], dict[str, set[str]]]:
        return self.renames.get(direction, {}), self.dropped.get(direction, {})

    # ---- one round ---------------------------------------------------------------------
    def _conn(self, cluster: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(cluster)
        if conn is None or conn.closed:
            conn = self._conns[cluster] = connect(self.config.cluster(cluster).dsn, f"cluster {cluster}",
                                                  autocommit=True)
            capture.mark_applied_session(conn)
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (str(LOCK_TIMEOUT_MS),))
        return conn

    def _round(self) -> None:
        rec = self.store.migration(self.migration)
        policy = rec.settings.get("on_ddl", "apply")
        for s in self.streams:
            self._read(s, policy)
        changes = self.store.ddl_changes(self.migration)
        self._tolerate(changes)
        self.paused = self._pause_of(changes)
        applied = {(a["direction"], a["destination"], a["statement"]) for a in self.store.ddl_applied(self.migration)}
        stopped: set[tuple[str, str]] = set()  # a cluster's changes after a paused one wait for it
        for ch in changes:
            if ch["status"] == "paused":
                stopped.add((ch["direction"], ch["cluster"]))
            elif ch["status"] == "placing" and (ch["direction"], ch["cluster"]) not in stopped:
                self._place(ch, changes, applied)

    def _read(self, s: Stream, policy: str) -> None:
        conn = self._conn(s.cluster)
        if conn.execute("SELECT to_regclass('reshard.ddl_log')").fetchone()[0] is None:
            return
        for e in capture.entries(conn, self.migration, self.store.last_ddl_entry(self.migration, s.direction,
                                                                                   s.cluster)):
            found = ops(e.tbl, e.before, e.after, self._key_columns(conn, e.tbl))
            unsupported = [o.what for o in found if o.phase == Phase.UNSUPPORTED]
            if policy == "ignore":
                status, reason = "ignored", "--on-ddl ignore"
            elif policy == "pause":
                status, reason = "paused", f"--on-ddl pause; {way_on(s.cluster, e.id, self.migration)}"
            elif unsupported:
                status, reason = "paused", (f"reshard cannot place this safely ({'; '.join(unsupported)}); "
                                            f"{way_on(s.cluster, e.id, self.migration)}")
            else:
                status, reason = ("placing" if found else "applied"), None
            mark = mark_positions(self.config, self.migration, [s], {s.cluster: conn})[s]
            if self.store.record_ddl(self.migration, s.direction, s.cluster, e.id, e.tbl, e.statement, e.lsn,
                                     [o.to_dict() for o in found], status, reason, mark):
                log.info("schema change on %s (%s, %s): %s -> %s", s.cluster, e.tbl, e.lsn, e.statement.strip(),
                         "; ".join(f"{o.what} [{o.phase}]" for o in found) or "nothing to place")

    def _key_columns(self, conn: psycopg.Connection[Any], table: str) -> set[str]:
        keys: set[str] = set()
        for g in self.plan.new.groups.values():
            if table in g.tables:
                keys |= set(g.key_columns(table))
        with contextlib.suppress(Exception):
            keys |= set(require_table(conn, table, "").pk)
        return keys

    def _tolerate(self, changes: list[dict]) -> None:
        before = (self.renames, self.dropped)
        renames: dict[str, dict] = {}
        dropped: dict[str, dict] = {}
        for direction in (Direction.FORWARD, Direction.REVERSE):
            recorded = [Op.from_dict(o) for ch in changes if ch["direction"] == direction
                        and ch["status"] in ("placing", "applied") for o in ch["ops"]]
            renames[direction], dropped[direction] = tolerance(recorded)
        if (renames, dropped) != before:
            with self.lock:
                self.renames, self.dropped = renames, dropped
                self.generation += 1

    def _pause_of(self, changes: list[dict]) -> MigrationPaused | None:
        for ch in changes:
            if ch["status"] == "paused":
                return MigrationPaused(
                    f"schema change on {ch['cluster']} at {ch['lsn']} ({ch['tbl']}): {ch['statement'].strip()!r}: "
                    f"{ch['reason']}")
        return None

    # ---- placing -----------------------------------------------------------------------
    def _destinations(self, direction: str, cluster: str, table: str) -> list[str]:
        return destinations(self.plan, direction, cluster, table)

    def _feeders(self, direction: str, destination: str, table: str) -> list[str]:
        live = {s.cluster for s in self.streams if s.direction == direction}
        return [c for c in feeders(self.plan, direction, destination, table) if c in live]

    def _place(self, ch: dict, changes: list[dict], applied: set[tuple[str, str, str]]) -> None:
        direction, pending = ch["direction"], 0
        for o in (Op.from_dict(d) for d in ch["ops"]):
            for dest in self._destinations(direction, ch["cluster"], o.table):
                if (direction, dest, o.statement) in applied:
                    continue
                if not self._ready(o, ch, dest, changes, applied):
                    pending += 1
                    continue
                bringing = [c for c in changes if c["direction"] == direction and c["status"] in ("placing", "applied")
                            and any(d["statement"] == o.statement for d in c["ops"])]
                self._apply(o, dest)
                failpoint("ddl_apply", "applied")
                self.store.record_ddl_applied(self.migration, direction, dest, o.to_dict(),
                                              {c["cluster"]: c["lsn"] for c in bringing})
                applied.add((direction, dest, o.statement))
                log.info("applied on %s: %s (%s)", dest, o.what, o.phase)
        if not pending:
            self.store.set_ddl_status(self.migration, direction, ch["cluster"], ch["entry_id"], "applied")
            ch["status"] = "applied"

    def _ready(self, o: Op, ch: dict, dest: str, changes: list[dict], applied: set[tuple[str, str, str]]) -> bool:
        direction = ch["direction"]
        # an earlier op on the same column, index or constraint goes first (drop c, then add c again)
        for c in changes:
            if c is ch:
                break
            if c["direction"] != direction or c["status"] != "placing":
                continue
            for d in c["ops"]:
                if d["table"] == o.table and {d["name"], d["new_name"]} & {o.name, o.new_name} - {""} \
                        and (direction, dest, d["statement"]) not in applied:
                    return False
        if o.phase == Phase.EARLY:
            return True
        for feeder in self._feeders(direction, dest, o.table):
            bringing = [c for c in changes if c["direction"] == direction and c["cluster"] == feeder
                        and c["status"] in ("placing", "applied") and any(d["statement"] == o.statement
                                                                           for d in c["ops"])]
            if not bringing or not any(self._passed(c) for c in bringing):
                return False
        return True

    def _passed(self, ch: dict) -> bool:
        """Whether everything the change's cluster streamed before the change is applied."""
        if ch["passed_at"] is not None:
            return True
        stream = next((s for s in self.streams if s.direction == ch["direction"] and s.cluster == ch["cluster"]), None)
        if stream is None or ch["pass_mark"] is None:
            return False
        key = (ch["direction"], ch["cluster"], ch["entry_id"])
        p = self._passage.setdefault(key, _Passage())
        topics = [stream.topic(t) for t in self.plan.tables()]
        with KafkaAdmin(self.config.kafka) as admin:
            if p.ends is None:
                ok = self._conn(stream.cluster).execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    (ch["pass_mark"], stream.slot)).fetchone()
                if not ok or not ok[0]:
                    return False
                p.ends = admin.end_offsets(topics)
            done = admin.committed(applier_group(self.migration), topics, timeout=5.0)
        if any(done.get(tp, 0) < end for tp, end in p.ends.items()):
            return False
        self.store.ddl_passed(self.migration, ch["direction"], ch["cluster"], ch["entry_id"])
        ch["passed_at"] = True
        del self._passage[key]
        return True

    def _apply(self, o: Op, dest: str) -> None:
        """Apply one op on ``dest`` unless its shape says it is there already."""
        conn = self._conn(dest)
        if o.done(capture.shape(conn, o.table)):
            return
        if o.concurrent:
            if o.kind == "create_index":
                _drop_invalid(conn, o.table.split(".", 1)[0], o.name)
            conn.execute(o.statement)
            return
        with self.lock:
            with conn.transaction():
                conn.execute(o.statement)
            self.generation += 1


def settle(config: Config, store: ControlStore, migration: str, streams: list[Stream],
           timeout: float = 60.0) -> list[dict]:
    """Place what ``streams``' clusters logged before the streams go (a rollback drops the
    reverse streams: a change a new owner made just before it must still reach the sources).
    Rounds until none of their changes is being placed, at most ``timeout`` seconds; returns
    the ones still placing or paused then (said by the caller; `reshard ddl list` has them)."""
    if not streams:
        return []
    rec = store.migration(migration)
    f = DdlFollower(config, store, rec, store.plan_of(rec), streams)
    clusters = {(s.direction, s.cluster) for s in streams}
    deadline = time.monotonic() + timeout
    try:
        while True:
            f.sync()
            left = [c for c in store.ddl_changes(migration) if (c["direction"], c["cluster"]) in clusters
                    and c["status"] in ("placing", "paused")]
            if not left or any(c["status"] == "paused" for c in left) or time.monotonic() > deadline:
                return left
            time.sleep(0.5)
    finally:
        f.stop()


def _drop_invalid(conn: psycopg.Connection[Any], schema: str, index: str) -> None:
    """An index build a crash interrupted stays, invalid, under its name: drop it to build it again."""
    if conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = "
        "c.relnamespace WHERE n.nspname = %s AND c.relname = %s AND NOT i.indisvalid", (schema, index)).fetchone():
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, index)))
