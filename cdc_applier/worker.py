"""The applier: one member of the migration's consumer group, for both directions.

Loop: poll a batch, decode and route each record, apply each destination's share in
one transaction (rows + per-key positions + offsets), send what could not be applied
to the dead-letter topic and flush it, and only then commit the batch's offsets to
Kafka. A crash anywhere replays from the last Kafka commit, and the per-key positions
make the replay a no-op. More members of the same group split the partitions.

Before cutover it applies the forward streams (sources -> targets). After cutover the
migration also has reverse streams (targets -> sources); the worker notices them in
the control database and subscribes, so the same ``reshard apply`` keeps rollback
possible. Each direction's writes carry a replication origin, and each stream skips
the other direction's origin: nothing echoes back.

It stops on input it will not guess about (schema drift, a TRUNCATE, a partial
update of a missing row) with ``MigrationPaused``/``SchemaMismatch``, before writing
any of that batch, and records the reason in the control database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from reshard.cdc_applier import metrics
from reshard.cdc_applier.apply import ApplyStats, Routed, TargetWriter
from reshard.cdc_applier.avro import WriterSchemas
from reshard.cdc_applier.batch import Batch, prepare
from reshard.cdc_applier.commits import OffsetCommits, left_group
from reshard.cdc_applier.dlq import DeadLetters
from reshard.cdc_applier.failover_watch import FailoverWatch
from reshard.cdc_applier.metrics import STATS_INTERVAL_MS, WorkerMetrics
from reshard.cdc_applier.route import Router
from reshard.cluster import shard_schema
from reshard.cluster.catalog import require_table
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.records import MigrationRecord
from reshard.control.states import State
from reshard.control.store import ControlStore
from reshard.ddl.follower import DdlFollower
from reshard.errors import MigrationPaused, ReshardError, SchemaMismatch, Unavailable
from reshard.kafka.admin import client_conf
from reshard.kafka.streams import Direction, Stream, streams_of
from reshard.live_control import LiveControl
from reshard.maps.planner import Plan
from reshard.observe.events import EventRelay
from reshard.observe.logs import bind
from reshard.observe.progress import Task
from reshard.proof.catchup import applier_group
from reshard.retry import retry

log = logging.getLogger("reshard.cdc_applier.worker")
SUMMARY_EVERY_S = 30.0  # a running worker says what it did this often, busy or idle

HEARTBEAT_S = 2.0
POLL_S = 0.1  # an idle worker waits this long for a record before it looks around (heartbeat, stop, pause)
FETCH_WAIT_MS = 10
LINGER_S = 0.005  # a batch that is not full waits this long for more records (fewer, larger target transactions)
SAMPLE_EVERY_S = 10.0  # a worker records what it measured for `reshard report` this often (at heartbeats)
RATE_WINDOW_S = 10.0  # the "current" apply rate a worker reports is over about this long
KAFKA_OUTAGE_S = 300.0  # how long a worker waits for an unreachable Kafka before it exits (4)
RETRY_LIMIT = 8
CLOSE_TIMEOUT_S = 10.0
ORIGIN_POOL = 16  # concurrent writer sessions per direction and cluster


@dataclass
class ApplierStats:
    records: int = 0
    applied: int = 0
    skipped_stale: int = 0
    superseded: int = 0
    not_moving: int = 0
    echoes: int = 0
    dead_letters: int = 0
    batches: int = 0
    reverse_records: int = 0
    started: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict:
        elapsed = time.monotonic() - self.started
        return {
            "records": self.records, "applied": self.applied, "skipped_stale": self.skipped_stale,
            "superseded": self.superseded, "not_moving": self.not_moving, "echoes": self.echoes,
            "dead_letters": self.dead_letters, "batches": self.batches, "reverse_records": self.reverse_records,
            "seconds": round(elapsed, 3),
            "events_per_second": round(self.records / elapsed) if elapsed > 0 else 0,
        }


def _lsn_int(text: str | None) -> int | None:
    if not text:
        return None
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def tag_origin(conn: psycopg.Connection[Any], prefix: str) -> str:
    """Mark this session's transactions with a replication origin from the prefix's pool.

    An origin can be active in one session at a time, so take the first free one."""
    for i in range(ORIGIN_POOL):
        name = f"{prefix}_{i}"
        try:
            with conn.transaction():
                if not conn.execute("SELECT 1 FROM pg_replication_origin WHERE roname = %s", (name,)).fetchone():
                    conn.execute("SELECT pg_replication_origin_create(%s)", (name,))
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", (name,))
            return name
        except (psycopg.errors.ObjectInUse, psycopg.errors.UniqueViolation):
            continue
    raise Unavailable(f"all {ORIGIN_POOL} replication origins {prefix}_* are in use: too many applier workers")


class _Summary:
    """What a worker says every SUMMARY_EVERY_S: its rate since the last line and its lag,
    or that it is idle and since when; and, once, when a busy spell ends."""

    def __init__(self, stats: ApplierStats):
        self.stats = stats
        self.at = time.monotonic()
        self.applied, self.records = stats.applied, stats.records
        self.idle_since: float | None = None

    def idle(self) -> None:
        if self.idle_since is None:
            self.idle_since = time.monotonic()
            if self.stats.records:
                log.info("caught up: nothing to read (%d events applied so far)", self.stats.applied)

    def maybe_say(self, lag_s: float | None) -> None:
        now = time.monotonic()
        if now - self.at < SUMMARY_EVERY_S:
            return
        span, applied, records = now - self.at, self.stats.applied - self.applied, self.stats.records - self.records
        if records:
            self.idle_since = None
            log.info("applied %d events from %d records in %.0fs (%.0f events/s), lag %s", applied, records, span,
                     applied / span, "unknown" if lag_s is None else f"{lag_s:.1f}s",
                     extra={"fields": {"events_applied": applied, "records": records, "seconds": round(span, 1),
                                       "events_per_s": round(applied / span, 1), "lag_s": lag_s}})
        elif self.idle_since is not None:
            log.info("idle for %.0fs: nothing to read", now - self.idle_since,
                     extra={"fields": {"idle_s": round(now - self.idle_since, 1)}})
        self.at, self.applied, self.records = now, self.stats.applied, self.stats.records


class Applier:
    def __init__(self, config: Config, store: ControlStore, rec: MigrationRecord, plan: Plan,
                 *, batch_size: int = 2000, worker_id: str | None = None, kafka_outage_s: float = KAFKA_OUTAGE_S,
                 sample_every_s: float = SAMPLE_EVERY_S):
        self.config = config
        self.store = store.per_thread()  # its loop and helper threads each keep a control session
        store = self.store
        self.rec = rec
        self.plan = plan
        self.batch_size = batch_size
        self.kafka_outage_s = kafka_outage_s
        self.sample_every_s = sample_every_s
        self._kafka_down_since: float | None = None
        self.commits = OffsetCommits(RETRY_LIMIT)
        self._settle: Callable[[], None] = lambda: None  # run()'s: the batch in flight, then refused offsets
        self._last_sample = 0.0
        self._kafka_said = False
        self.worker_id = worker_id or f"applier@{socket.gethostname()}:{os.getpid()}"
        self.router = Router(plan, streams_of(store, rec, plan))
        self.failover_watch = FailoverWatch(config, store, rec.name, plan.tables(), self.router.streams)
        self.ddl = DdlFollower(config, store, rec, plan, self.router.streams)
        self._ddl_generation = 0  # the follower's generation the writers were built at
        self.stats = ApplierStats()
        self.writers: dict[tuple[str, str], TargetWriter] = {}
        # JSON topics need no registry; Avro ones are read with writer schemas fetched once per id
        url = config.kafka.schema_registry_url
        self.schemas = WriterSchemas(url) if url else None
        self._relay: EventRelay | None = None
        self.metrics = WorkerMetrics(rec.name, self.worker_id)
        self._relay_said = False
        bind(migration=rec.name, worker=self.worker_id)
        self._beats: deque[tuple[float, int]] = deque()  # (when, events applied) at each heartbeat
        self.finished: str | None = None  # the migration completed or was aborted under this worker
        self.live = LiveControl(store, rec.name)
        self._held: set[tuple[str, int]] = set()  # partitions held back by `reshard pause --apply`

    @property
    def topics(self) -> list[str]:
        return self.router.topics

    # ---- destinations ---------------------------------------------------------------
    def _destinations(self) -> dict[tuple[str, str], list[str]]:
        """(cluster, direction) -> tables written there."""
        dests: dict[tuple[str, str], set[str]] = {}
        reverse_on = any(s.direction == Direction.REVERSE for s in self.router.streams)
        for m in self.plan.moves:
            tables = self.plan.new.groups[m.group].tables
            dests.setdefault((m.target, Direction.FORWARD), set()).update(tables)
            if reverse_on:
                dests.setdefault((m.source, Direction.REVERSE), set()).update(tables)
        return {k: sorted(v) for k, v in dests.items()}

    def _connect(self, cluster: str, direction: Direction, tables: list[str]) -> TargetWriter:
        c = self.config.cluster(cluster)
        conn = connect(c.dsn, f"cluster {cluster}", autocommit=True)
        shard_schema.writer_session(conn)
        stream = Stream(self.rec.name, direction, cluster)  # writes carry the direction's origin and positions
        tag_origin(conn, stream.writer_origin)
        infos = {t: require_table(conn, t, cluster) for t in tables}
        renames, dropped = self.ddl.tolerance(direction)
        resumed: dict[str, int] = {}
        if direction == Direction.FORWARD:
            for row in conn.execute(
                "SELECT tbl, max(resumed_lsn)::text FROM reshard.copy_cursor WHERE migration = %s GROUP BY tbl",
                (self.rec.name,),
            ).fetchall():
                lsn = _lsn_int(row[1])
                if lsn is not None:
                    resumed[row[0]] = lsn
        return TargetWriter(conn, cluster, stream.applied_key, infos, resumed, renames, dropped)

    def _writer(self, cluster: str, direction: Direction) -> TargetWriter:
        key = (cluster, direction)
        w = self.writers.get(key)
        if w is None or w.conn.closed:
            w = self._connect(cluster, direction, self._destinations().get(key, []))
            self.writers[key] = w
        return w

    def _close_writers(self) -> None:
        for w in self.writers.values():
            try:
                w.conn.close()
            except Exception:
                pass
        self.writers = {}

    # ---- the loop ----------------------------------------------------------------------
    def _refresh_streams(self, consumer: Consumer) -> None:
        streams = streams_of(self.store, self.rec, self.plan)
        if set(streams) != set(self.router.streams):
            self.router = Router(self.plan, streams)
            self.failover_watch.follow(streams)
            self.ddl.follow(streams)
            self._close_writers()
            self._subscribe(consumer)

    def _subscribe(self, consumer: Consumer) -> None:
        """Subscribe to the streams' topics; before partitions are revoked, the batch in flight
        and refused offsets are committed (a subscription replaces the callbacks: every one
        goes through here)."""
        consumer.subscribe(self.topics, on_revoke=lambda _c, _parts: self._settle())

    def run(self, stop: threading.Event, *, until: Callable[[], bool] | None = None,
            task: Task | None = None) -> ApplierStats:
        """Two stages: this thread polls, decodes and routes batch N+1 while a helper thread
        applies batch N (a worker is otherwise idle while the targets work); this thread
        then commits batch N's offsets. Batches are applied and committed in order, at most one in flight,
        and offsets are committed only after their batch is applied; before partitions are
        revoked, before streams change and on the way out, the batch in flight finishes
        and commits first."""
        inflight: list[Future] = []

        def settle() -> None:
            # Kafka offsets are committed here, on the polling thread: a synchronous commit from
            # the helper while this thread runs a rebalance callback would wait for each other
            while inflight:
                self._commit(consumer, inflight.pop().result())  # result() re-raises the apply's error
            if self.commits.kept:  # offsets Kafka refused during a rebalance
                self._commit(consumer, {})

        consumer = self._consumer()
        dlq = DeadLetters(self.config.kafka, self.rec.name, self.config.kafka.schema_registry_url)
        self._settle = settle
        self._subscribe(consumer)
        last_beat = 0.0
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reshard-apply")
        self.store.prune_workers(self.rec.name)
        self.metrics.running(True)
        self.failover_watch.start()
        self.ddl.start()
        log.info("started: consumer group %s, %d topic(s), batches of up to %d records", applier_group(self.rec.name),
                 len(self.topics), self.batch_size)
        summary = _Summary(self.stats)
        try:
            while not stop.is_set():
                if self.ddl.paused is not None:
                    raise self.ddl.paused  # a schema change the policy will not place: stop before its rows
                self._obey(consumer)
                # while a batch is applied, look for its end often: its offsets are committed here
                msgs = self._fetch(consumer, LINGER_S if inflight else POLL_S)
                if not msgs and not inflight:
                    self.metrics.idle()
                    summary.idle()
                summary.maybe_say(self.metrics.max_lag_s())
                if msgs:
                    batch = self._prepare(dlq, msgs)
                    settle()
                    inflight.append(pool.submit(self._finish, dlq, batch))
                    if task is not None:
                        task.update(done=self.stats.records, extra=f"applied {self.stats.applied:,}")
                elif inflight and inflight[0].done():
                    settle()
                now = time.monotonic()
                if now - last_beat >= HEARTBEAT_S:
                    last_beat = now
                    self._heartbeat(consumer, now, settle)
                if until is not None and not msgs and until():
                    break
                if self.finished is not None:
                    log.info("the migration is %s: nothing is left to apply; stopping", self.finished)
                    break
            settle()
        except (MigrationPaused, SchemaMismatch) as exc:
            with contextlib.suppress(Exception):
                settle()  # what was decoded before the pause is applied and committed
            self.store.set_error(self.rec.name, f"applier paused: {exc}")
            log.error("paused: %s", exc)
            raise
        finally:
            self._shut_down(consumer, pool, settle)
        return self.stats

    def _fetch(self, consumer: Consumer, wait_s: float) -> list:
        """Up to a batch of records: what is waiting, at once; else the first record to arrive
        (within ``wait_s``) and what follows it within LINGER_S. ``consume`` alone waits its whole
        timeout for a batch that is not full (librdkafka), which held a trickle of changes,
        and a cutover's drain inside the write pause, for up to that long."""
        msgs = consumer.consume(self.batch_size, timeout=0)
        if not msgs:
            first = consumer.poll(wait_s)
            if first is None:
                return []
            msgs = [first]
        if len(msgs) < self.batch_size:
            msgs += consumer.consume(self.batch_size - len(msgs), timeout=LINGER_S)
        return msgs

    def _obey(self, consumer: Consumer) -> None:
        """`reshard pause --apply`: stop fetching (the partitions this member holds are paused,
        again after a rebalance; what was fetched before is applied and committed as usual),
        heartbeats go on; `reshard resume` fetches again."""
        if self.live.paused("apply"):
            held = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            if held != self._held:
                if not self._held:
                    log.warning("paused by `reshard pause --apply`: fetching nothing until `reshard resume %s`",
                                self.rec.name)
                consumer.pause(consumer.assignment())
                self._held = held
        elif self._held:
            consumer.resume([TopicPartition(t, p) for t, p in self._held])
            self._held = set()
            log.warning("resumed by `reshard resume`")

    def _consumer(self) -> Consumer:
        return Consumer(client_conf(self.config.kafka, **{
            "group.id": applier_group(self.rec.name),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "client.id": self.worker_id,
            "partition.assignment.strategy": "cooperative-sticky",
            # a worker that dies (SIGKILL, lost host) gives its partitions away within 10 s
            "session.timeout.ms": 10000,
            # large fetches, bounded: at most ~64 MB waits in the client; a trickle is fetched
            # within 10 ms (the broker holds a fetch below fetch.min.bytes that long)
            "fetch.min.bytes": 65536, "fetch.wait.max.ms": FETCH_WAIT_MS, "queued.max.messages.kbytes": 65536,
            "error_cb": self._on_kafka_error,
            "statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self.metrics.kafka_stats,
        }))

    def _heartbeat(self, consumer: Consumer, now: float, settle: Callable[[], None]) -> None:
        """Every HEARTBEAT_S: say this worker lives, record a sample now and then, ride out a
        Kafka outage, relay the audit log's events, and follow streams that came or went."""
        self.store.heartbeat(self.rec.name, self.worker_id, "applier", self._beat())
        state = self.store.migration(self.rec.name).state
        if state in (State.COMPLETE, State.ABORTED):
            self.finished = state  # nothing will ever stream again: the loop ends
        if now - self._last_sample >= self.sample_every_s:
            self._last_sample = now
            self.store.record_sample(self.rec.name, self.worker_id, self.stats.records, self.stats.applied,
                                     self.metrics.max_lag_s(), self.metrics.records_lag())
        self._ride_out_outage(consumer, now)
        self._relay_events()
        if self._kafka_down_since is None:
            settle()
            self._refresh_streams(consumer)

    def _shut_down(self, consumer: Consumer, pool: ThreadPoolExecutor, settle: Callable[[], None]) -> None:
        """The batch in flight finishes and commits, the worker says it stopped, leaves the
        group (its partitions move at once) and closes its sessions."""
        self.metrics.running(False)
        self.failover_watch.stop()
        self.ddl.stop()
        with contextlib.suppress(Exception):
            settle()
        pool.shutdown(wait=True)
        with contextlib.suppress(ReshardError):
            self.store.worker_stopped(self.rec.name, self.worker_id, self._beat())
        self._leave_group(consumer)
        self._close_writers()
        self.store.close()
        log.info("stopped: %d events applied from %d records, %d dead letters", self.stats.applied,
                 self.stats.records, self.stats.dead_letters)

    @staticmethod
    def _leave_group(consumer: Consumer, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close the consumer (leave the group at once, so its partitions move now), but
        never wait on it for long: a close was seen to block after a rollback deleted topics
        the consumer was subscribed to. Every applied batch is already committed; a member
        that does not leave cleanly is dropped by the group after ``session.timeout.ms``."""
        t = threading.Thread(target=consumer.close, name="reshard-consumer-close", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            log.warning("the Kafka consumer did not close within %.0fs; leaving it to the group's session timeout "
                        "(nothing is lost: every applied batch is committed)", timeout)

    def _beat(self) -> dict:
        """The heartbeat's stats: lifetime totals, and what `reshard status` shows as current:
        events applied per second over the last RATE_WINDOW_S and the lag per stream."""
        now = time.monotonic()
        self._beats.append((now, self.stats.applied))
        while len(self._beats) > 2 and now - self._beats[1][0] >= RATE_WINDOW_S:
            self._beats.popleft()
        (t0, a0) = self._beats[0]
        recent = (self.stats.applied - a0) / (now - t0) if now - t0 > 0.5 else None
        return {**self.stats.to_dict(), "metrics_port": metrics.served_port, "paused": bool(self._held),
                "recent_events_per_second": None if recent is None else round(recent, 1),
                "lag_seconds": self.metrics.lag_s()}

    def _relay_events(self) -> None:
        """Publish the control database's new audit entries to ``reshard.events`` (see
        reshard/observe/events.py); a failure is said once and retried next heartbeat: the
        events wait in the audit log, and applying never waits on them."""
        if not self.config.kafka.schema_registry_url or self._kafka_down_since is not None:
            return
        try:
            if self._relay is None:
                self._relay = EventRelay(self.config, self.store)
            self._relay.publish()
            self._relay_said = False
        except (ReshardError, KafkaException, psycopg.Error) as exc:
            if not self._relay_said:
                log.warning("cannot publish migration events yet (%s); retrying", exc)
                self._relay_said = True

    def _on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (runs inside consume): note when Kafka went away."""
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            if self._kafka_down_since is None:
                self._kafka_down_since = time.monotonic()

    def _ride_out_outage(self, consumer: Consumer, now: float) -> None:
        """While Kafka is unreachable: say so once, probe it every heartbeat, resume when it
        answers, and give up (Unavailable, exit 4) after ``kafka_outage_s``."""
        if self._kafka_down_since is None:
            return
        try:
            consumer.list_topics(timeout=1.0)
        except KafkaException:
            down = now - self._kafka_down_since
            if not self._kafka_said:
                log.warning("Kafka at %s is unreachable; waiting for it (up to %.0fs, --kafka-outage)",
                            self.config.kafka.bootstrap_servers, self.kafka_outage_s)
                self._kafka_said = True
            if down > self.kafka_outage_s:
                raise Unavailable(f"Kafka at {self.config.kafka.bootstrap_servers} has been unreachable for "
                                  f"{down:.0f}s; nothing was lost: rerun `reshard apply` once it is back") from None
            return
        if self._kafka_said:
            log.warning("Kafka is reachable again after %.0fs; resuming", now - self._kafka_down_since)
        self._kafka_down_since, self._kafka_said = None, False

    def _prepare(self, dlq: DeadLetters, msgs: list) -> Batch:
        """Decode and route a polled batch (see batch.py); records that cannot be decoded or
        routed go to the dead-letter topic here (the batch's flush covers them)."""
        b = prepare(msgs, self.router, self.schemas)
        self.stats.records += b.records
        self.stats.reverse_records += b.reverse
        self.stats.echoes += b.echoes
        self.stats.not_moving += b.not_moving
        for m, reason in b.dead:
            dlq.send(m.topic(), m.partition(), m.offset(), m.key(), m.value(), reason)
            self.stats.dead_letters += 1
            self.metrics.dead_letter()
        return b

    def _finish(self, dlq: DeadLetters, b: Batch) -> dict[tuple[str, int], int]:
        """Apply a prepared batch per destination, dead-letter what a target rejected and
        flush the dead letters; returns the offsets the polling thread may now commit."""
        started = time.monotonic()
        for (cluster, direction), items in b.per_dest.items():
            touched = {(r.topic, r.partition) for r in items}
            stats = self._apply_with_retry(cluster, direction, items,
                                           {tp: o for tp, o in b.offsets.items() if tp in touched})
            self.stats.applied += stats.applied
            self.stats.skipped_stale += stats.skipped_stale
            self.stats.superseded += stats.superseded
            self.metrics.applied(cluster, stats.applied)
            self.metrics.skipped("stale", stats.skipped_stale + stats.superseded)
            for r, reason in stats.rejected:
                raw = b.by_pos[(r.topic, r.partition, r.offset)]
                dlq.send(r.topic, r.partition, r.offset, raw.key(), raw.value(), f"{cluster}: {reason}",
                         lsn=r.event.lsn, cluster=cluster)
                self.stats.dead_letters += 1
                self.metrics.dead_letter()
        dlq.flush()
        self.stats.batches += 1
        for label, n in b.read.items():
            self.metrics.read(label, n)
        self.metrics.skipped("echo", b.echoes)
        self.metrics.skipped("not_moving", b.not_moving)
        self.metrics.batch(time.monotonic() - started, b.newest_ms)
        return b.offsets

    def _apply_with_retry(self, cluster: str, direction: Direction, items: list[Routed], offsets: dict) -> ApplyStats:
        """Transient failures (restart, network) are retried with backoff on fresh
        connections; the batch is the same, and idempotent, so retrying is safe."""
        mismatches = 0

        def once() -> ApplyStats:
            # no schema change is made on a destination while a batch is applied there
            with self.ddl.lock:
                if self._ddl_generation != self.ddl.generation:
                    self._ddl_generation = self.ddl.generation
                    self._close_writers()  # columns changed, or what rows may carry: read the tables again
                try:
                    return self._writer(cluster, direction).apply(items, offsets)
                except (SchemaMismatch, psycopg.OperationalError, Unavailable):
                    self._close_writers()  # the next try reads the tables again, on fresh sessions
                    raise

        def transient(exc: BaseException) -> bool:
            nonlocal mismatches
            if isinstance(exc, SchemaMismatch):
                # a row of a shape the destination does not take yet: the schema change that
                # made it is in a source's log; place it now, then read the tables again
                # (once more, for a change applied there by hand meanwhile) before pausing
                mismatches += 1
                if mismatches <= 2:
                    self.ddl.sync()
                    if self.ddl.paused is not None:
                        raise self.ddl.paused
                return mismatches <= 2
            return isinstance(exc, (psycopg.OperationalError, Unavailable))
        try:
            stats = retry(once, on=transient, attempts=RETRY_LIMIT, delay=0.5, backoff=2, max_delay=10.0)
            if stats.rejected:
                # a value the destination's column cannot take yet (a widened type the follower has
                # not placed): place what the sources logged, and if that changed anything apply the
                # batch again (what it applied already is skipped by the per-key positions)
                before = self.ddl.generation
                self.ddl.sync()
                if self.ddl.generation != before:
                    again = retry(once, on=transient, attempts=RETRY_LIMIT, delay=0.5, backoff=2, max_delay=10.0)
                    again.applied += stats.applied
                    again.skipped_stale = max(0, again.skipped_stale - stats.applied) + stats.skipped_stale
                    stats = again
            return stats
        except (psycopg.OperationalError, Unavailable) as exc:
            raise Unavailable(f"cluster {cluster} keeps failing: {exc}") from None

    def _commit(self, consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
        """Commit a batch's offsets (and any Kafka refused before) after its effects committed
        on the targets (cdc_applier/commits.py). A refusal is not fatal: the batch is applied and
        its offsets are committed again later. Kafka's absence is handled by the outage rules
        (``_ride_out_outage``), not by exiting here."""
        try:
            self.commits.commit(consumer, offsets)
        except KafkaException as exc:
            if not left_group(exc) and self._kafka_down_since is None:
                self._kafka_down_since = time.monotonic()
