"""`reshard complete`: the point of no return for the whole migration.

After it, rollback is no longer possible. Each step is recorded and idempotent, so a
rerun after a crash finishes what is left:

1. stop reverse replication (its connectors, slots, publications, topics);
2. stop forward replication the same way;
3. delete the moved rows from the sources in throttled batches (``--keep-source-data``
   skips it), as reshard's writer so the fence lets the deletes through;
4. leave every involved cluster with the plain fence of the final map (no fenced or
   switching keys); ``drop_fences`` removes reshard's triggers altogether, which lets
   stale routers write to the old owners again;
5. forget reshard's bookkeeping rows and replication origins of the migration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field

from psycopg import sql

from reshard.cdc_applier.connector import drop_streams
from reshard.cluster import fence, shard_schema
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.lease import Lease
from reshard.control.records import MigrationRecord
from reshard.control.states import State
from reshard.control.store import ControlStore
from reshard.errors import MigrationError
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.streams import Direction, dlq_topic, streams_of
from reshard.live_control import LiveControl
from reshard.maps.planner import Plan
from reshard.maps.planner import plan as make_plan
from reshard.maps.shardmap import ShardMap, table_ident
from reshard.observe.progress import Progress
from reshard.snapshotter.throttle import CopyThrottle, ThrottleSettings

STEPS = ("stop_reverse", "stop_forward", "delete_source_rows", "fences", "forget")


@dataclass
class CompleteResult:
    migration: str
    deleted_rows: int = 0
    steps: list[dict] = field(default_factory=list)
    resumed: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def complete(config: Config, store: ControlStore, migration: str, *, keep_source_data: bool = False,
             drop_fences: bool = False, batch_rows: int = 5000, pause_s: float = 0.05, adaptive: bool = True,
             progress: Progress | None = None) -> CompleteResult:
    """Complete the migration under its lease, as every command that changes it does: a
    cutover or rollback of the same migration running meanwhile makes this exit 7 (Busy)
    before anything is read or changed, and each step re-checks the lease first."""
    with store.lease(migration, "complete") as lease:
        return _complete(config, store, migration, lease, keep_source_data=keep_source_data,
                         drop_fences=drop_fences, batch_rows=batch_rows, pause_s=pause_s, adaptive=adaptive,
                         progress=progress)


def _complete(config: Config, store: ControlStore, migration: str, lease: Lease, *, keep_source_data: bool,
              drop_fences: bool, batch_rows: int, pause_s: float, adaptive: bool,
              progress: Progress | None) -> CompleteResult:
    rec = store.migration(migration)
    running = [a for a in store.running_attempts(migration) if a["kind"] == "complete"]
    if rec.state == State.COMPLETE and not running:
        return CompleteResult(migration, steps=[{"step": "all", "note": "already complete"}])
    if rec.state not in (State.BAKING, State.FINALIZING) and not running:
        raise MigrationError(f"migration {migration} is {rec.state}: complete needs every wave cut over "
                             f"(`reshard cutover {migration}`)")
    result = CompleteResult(migration, resumed=bool(running))
    store.set_state(migration, State.FINALIZING, why="complete: drop the streams, remove moved rows from the sources")
    attempt = running[0]["attempt"] if running else store.begin_attempt(
        migration, "complete", None, {"keep_source_data": keep_source_data, "drop_fences": drop_fences})
    final = store.get_map(rec.to_epoch)
    c = _Completion(config, store, rec, lease, attempt, store.steps(migration, attempt), result,
                    make_plan(store.get_map(rec.from_epoch), final), final, progress or Progress("off"))
    c.run("stop_reverse", lambda: c.stop(Direction.REVERSE))
    c.run("stop_forward", lambda: c.stop(Direction.FORWARD))
    c.run("delete_source_rows", lambda: {"skipped": "--keep-source-data"} if keep_source_data
          else c.delete_rows(batch_rows, pause_s, adaptive))
    c.run("fences", lambda: c.fences(drop_fences))
    c.run("forget", c.forget)
    store.finish_attempt(migration, attempt, "done", {"deleted_rows": result.deleted_rows})
    store.set_state(migration, State.COMPLETE, why="complete: done, the point of no return passed")
    return result


@dataclass
class _Completion:
    """The steps of one complete attempt; a step recorded done (by a run that crashed after
    it) is not run again, and each step re-checks the lease first."""

    config: Config
    store: ControlStore
    rec: MigrationRecord
    lease: Lease
    attempt: int
    done: dict[str, dict]
    result: CompleteResult
    full: Plan
    final: ShardMap
    progress: Progress

    def run(self, name: str, fn: Callable[[], dict | None]) -> None:
        if self.done.get(name, {}).get("status") == "done":
            self.result.steps.append({"step": name, "note": "done before"})
            return
        self.lease.check()
        self.store.step(self.rec.name, self.attempt, name, "started")
        t = time.monotonic()
        detail = fn() or {}
        self.store.step(self.rec.name, self.attempt, name, "done", **detail)
        self.result.steps.append({"step": name, "ms": round((time.monotonic() - t) * 1000, 1), **detail})

    def clusters(self) -> list[str]:
        return sorted(set(self.full.sources()) | set(self.full.targets()))

    def stop(self, direction: Direction) -> dict:
        streams = [s for s in streams_of(self.store, self.rec, self.full) if s.direction == direction]
        return {"actions": drop_streams(self.config, self.store, self.rec.name, streams, self.full.tables())}

    def delete_rows(self, batch_rows: int, pause_s: float, adaptive: bool) -> dict:
        """The moved rows leave the sources in batches of ``batch_rows``, ``pause_s`` apart,
        paced per source by the copy's throttle: adaptive (slower while the source's probe says
        the application suffers) unless ``adaptive`` is off, capped by `reshard throttle
        --max-rows-per-second`, held between batches by `reshard pause --complete`."""
        task = self.progress.task("delete moved rows", unit="rows")
        live = LiveControl(self.store, self.rec.name)
        for move in self.full.moves:
            dsn = self.config.cluster(move.source).dsn
            tables = sorted(self.full.new.groups[move.group].tables)

            def said(text: str, source: str = move.source) -> None:
                self.progress.step(f"{source}: deletes {text}")

            pace = CopyThrottle(ThrottleSettings(adaptive=adaptive), dsn, live=live, part="complete", on_change=said)
            with connect(dsn, f"source cluster {move.source}", autocommit=True) as conn, closing(pace):
                shard_schema.writer_session(conn)
                pace.own(conn.info.backend_pid)  # the deletes' session is not the application
                pace.hint_width(conn, [table_ident(t).as_string(conn) for t in tables])
                for table in tables:
                    delete = sql.SQL("DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                                     "SELECT t.ctid FROM {table} t WHERE {pred} LIMIT {n}))").format(
                        table=table_ident(table), pred=self.full.predicate_sql(move, table, "t"),
                        n=sql.Literal(int(batch_rows)))
                    while True:
                        live.wait_while_paused("complete")
                        n = conn.execute(delete).rowcount
                        if n <= 0:
                            break
                        self.result.deleted_rows += n
                        task.advance(n)
                        if n < batch_rows:
                            break
                        nbytes = int(n * pace.width_hint)  # the rows' bytes, the unit the throttle paces
                        pace.landed(n, nbytes)
                        pace.take(nbytes)
                        time.sleep(pause_s)
        task.close()
        return {"deleted_rows": self.result.deleted_rows}

    def fences(self, drop: bool) -> dict:
        epoch = self.store.require_active()[0]  # the migration's target map (every wave is cut)
        out = {}
        for c in self.clusters():
            with connect(self.config.cluster(c).dsn, f"cluster {c}", autocommit=True) as conn:
                shard_schema.install(conn)
                out[c] = (fence.remove(conn, self.final.tables()) if drop
                          else fence.install(conn, fence.steady(c, epoch, self.final)))
        return {"removed" if drop else "steady": out}

    def forget(self) -> dict:
        """reshard's bookkeeping on every cluster (per cluster: origins are each server's own), and
        the dead-letter topic when it is empty; one holding dead letters stays, said, for whoever
        has to look at them (`kafka-topics --delete` removes it)."""
        dropped = {}
        for c in self.clusters():
            with connect(self.config.cluster(c).dsn, f"cluster {c}", autocommit=True) as conn:
                dropped[c] = shard_schema.forget(conn, self.rec.name)
        topic = dlq_topic(self.rec.name)
        with KafkaAdmin(self.config.kafka) as admin:
            letters = sum(admin.end_offsets([topic]).values()) if topic in admin.topics() else 0
            if letters:
                return {"dropped": dropped, "dead_letter_topic_kept": {"topic": topic, "records": letters}}
            admin.delete_topics([topic])
        return {"dropped": dropped, "dead_letter_topic_dropped": topic}
