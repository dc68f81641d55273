"""Migration-level Prometheus metrics: what a migration is, where the workers say what they do.

Every ``reshard apply`` worker exports its own work (cdc_applier/metrics.py). This module
exports the facts no single worker owns, read from where they live: states, copy
progress, live workers, cutover write pauses and the last verification from the control
database; slots from the source clusters; fences from every cluster; connector and task
states from Kafka Connect; consumer lag per partition and dead letters from Kafka.

They are gathered by a background refresh every few seconds, so a scrape never waits on
a cluster. A part that cannot be reached is counted in
``reshard_exporter_errors_total{part}`` and its metrics are left out of that refresh, never
reported as zero: an alert on a missing series stays quiet, one on a zero would lie.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import REGISTRY, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from reshard.cluster import fence
from reshard.cluster.session import connect
from reshard.control import states
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import dlq_topic
from reshard.live_control import PARTS as STEERED
from reshard.live_control import controls_of
from reshard.proof.catchup import applier_group, slot_lag

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
CONNECTOR_STATES = ("RUNNING", "PAUSED", "STOPPED", "FAILED", "UNASSIGNED", "RESTARTING", "MISSING")
PAUSE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

ERRORS = Counter("reshard_exporter_errors", "Refreshes in which a part could not be read (its metrics were left "
                 "out)", ["part"])
PARTS = ("control", "streams", "fences")
for _part in PARTS:  # every part's series exists from the start at 0
    ERRORS.labels(_part)
REFRESH_SECONDS = Gauge("reshard_exporter_refresh_seconds", "How long the last refresh took")
LAST_REFRESH = Gauge("reshard_exporter_last_refresh_timestamp_seconds", "When the last refresh finished")


@dataclass
class Families:
    """The metric families of one refresh, created on first use."""

    by_name: dict[str, Metric] = field(default_factory=dict)

    def gauge(self, name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        return self.by_name.setdefault(name, GaugeMetricFamily(name, doc, labels=labels))  # type: ignore[return-value]

    def counter(self, name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        return self.by_name.setdefault(name, CounterMetricFamily(name, doc, labels=labels))  # type: ignore[return-value]

    def histogram(self, name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
        return self.by_name.setdefault(name, HistogramMetricFamily(name, doc, labels=labels))  # type: ignore[return-value]


def _ts(value: datetime) -> float:
    return value.timestamp()


def pause_histogram(pauses: Iterable[float]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets and the sum of write pauses (seconds)."""
    pauses = list(pauses)
    buckets = [(str(b), float(sum(1 for p in pauses if p <= b))) for b in PAUSE_BUCKETS_S]
    buckets.append(("+Inf", float(len(pauses))))
    return buckets, float(sum(pauses))


class MigrationCollector(Collector):
    """Serves the latest refresh; ``refresh()`` builds the next one."""

    def __init__(self, coordinator, migrations: list[str] | None = None):
        self.co = coordinator
        self.only = migrations
        self._latest: list[Metric] = []
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._latest

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families vary with the migrations: collected on scrape only

    # ---- one refresh ------------------------------------------------------------------------------
    def refresh(self) -> None:
        t0 = time.monotonic()
        f = Families()
        names = self._migrations(f)
        for name in names:
            self._part(f"control:{name}", lambda name=name: self._control(f, name))
            self._part(f"streams:{name}", lambda name=name: self._streams(f, name))
            self._part(f"ddl:{name}", lambda name=name: self._ddl(f, name))
            self._part(f"steering:{name}", lambda name=name: self._steering(f, name))
        self._part("fences", lambda: self._fences(f))
        self._part("routers", lambda: self._routers(f))
        with self._lock:
            self._latest = list(f.by_name.values())
        REFRESH_SECONDS.set(time.monotonic() - t0)
        LAST_REFRESH.set(time.time())

    def _part(self, part: str, read) -> None:
        try:
            read()
        except Exception as exc:  # one part down must not stop the others
            ERRORS.labels(part.split(":")[0]).inc()
            log.warning("exporter: could not read %s: %s", part, exc)

    def _migrations(self, f: Families) -> list[str]:
        try:
            rows = self.co.store.migrations()
        except Exception as exc:
            ERRORS.labels("control").inc()
            log.warning("exporter: could not read the control database: %s", exc)
            return []
        state = f.gauge("reshard_migration_state", "1 for the migration's current state (one series per state)",
                        ["migration", "state"])
        names = []
        for r in rows:
            live = r["state"] in states.LIVE
            if (self.only and r["name"] not in self.only) or (not self.only and not live):
                continue
            names.append(r["name"])
            for s in states.ALL:
                state.add_metric([r["name"], s], 1.0 if s == r["state"] else 0.0)
        return names

    def _control(self, f: Families, name: str) -> None:
        store = self.co.store
        rows = f.counter("reshard_copy_rows_copied", "Rows the snapshot copy committed on the target",
                         ["migration", "move", "table"])
        nbytes = f.counter("reshard_copy_bytes_copied", "COPY bytes the snapshot copy committed on the target",
                           ["migration", "move", "table"])
        est = f.gauge("reshard_copy_rows_estimated", "Rows the copy expects to move (planner statistics: an "
                      "estimate)", ["migration", "move", "table"])
        done = f.gauge("reshard_copy_done", "1 once the unit's last batch committed", ["migration", "move", "table"])
        moved = f.gauge("reshard_copy_last_progress_timestamp_seconds", "When the unit last committed a batch",
                        ["migration", "move", "table"])
        for c in store.copy_progress(name):
            labels = [name, c["move_id"], c["tbl"]]
            rows.add_metric(labels, float(c["rows_copied"] or 0))
            nbytes.add_metric(labels, float(c["bytes_copied"] or 0))
            est.add_metric(labels, float(c["rows_estimate"] or 0))
            done.add_metric(labels, 1.0 if c["done"] else 0.0)
            if c.get("updated_at") is not None:
                moved.add_metric(labels, _ts(c["updated_at"]))
        live = f.gauge("reshard_appliers_live", "Applier workers whose heartbeat is fresh and which have not "
                       "stopped", ["migration"])
        seen = f.gauge("reshard_applier_last_seen_timestamp_seconds", "A worker's last heartbeat",
                       ["migration", "worker"])
        workers = store.workers(name)
        live.add_metric([name], float(sum(1 for w in workers if w["live"] and w["kind"] == "applier")))
        for w in workers:
            if w["stopped_at"] is None:
                seen.add_metric([name, w["worker"]], _ts(w["last_seen"]))
        pause = f.histogram("reshard_write_pause_seconds", "Write pause of each finished cutover or rollback "
                            "(fence up to routing flipped)", ["migration", "kind"])
        by_kind: dict[str, list[float]] = {"cutover": [], "rollback": []}
        for a in store.attempts(name):
            ms = (a["result"] or {}).get("pause_ms")
            if a["kind"] in by_kind and a["state"] == "done" and ms is not None:
                by_kind[a["kind"]].append(float(ms) / 1000.0)
        for kind, pauses in by_kind.items():
            buckets, total = pause_histogram(pauses)
            pause.add_metric([name, kind], buckets, total)
        last = store.last_verification(name)
        if last is not None:
            f.gauge("reshard_verification_equal", "1 if the last `reshard verify` found sources and targets equal",
                    ["migration"]).add_metric([name], 1.0 if last["detail"].get("equal") else 0.0)
            f.gauge("reshard_verification_timestamp_seconds", "When the last verification ran",
                    ["migration"]).add_metric([name], _ts(last["at"]))
        checked = store.last_event(name, "check.pass")
        if checked is not None:  # verify --continuous
            d = checked["detail"]
            f.gauge("reshard_continuous_check_divergent_keys", "Keys the last continuous-check pass found divergent "
                    "after settling them under row locks", ["migration"]).add_metric([name], float(len(d["mismatches"])))
            f.gauge("reshard_continuous_check_rows", "Rows the last continuous-check pass compared",
                    ["migration"]).add_metric([name], float(d["rows"]))
            f.gauge("reshard_continuous_check_timestamp_seconds", "When the last continuous-check pass ended",
                    ["migration"]).add_metric([name], _ts(checked["at"]))

    def _ddl(self, f: Families, name: str) -> None:
        """Schema changes: how many wait at a barrier per destination, and how many are paused."""
        from reshard.ddl.report import status_view

        d = status_view(self.co.store, name)
        waiting = f.gauge("reshard_ddl_waiting", "Schema-change ops waiting at a barrier (for every stream feeding "
                          "the destination to pass them), per destination", ["migration", "destination"])
        for dest, n in d["waiting_at_barrier"].items():
            waiting.add_metric([name, dest], float(n))
        f.gauge("reshard_ddl_paused", "Schema changes that paused the appliers (resolve with `reshard ddl resolve`)",
                ["migration"]).add_metric([name], float(d["changes"]["paused"]))
        f.gauge("reshard_ddl_applied", "Schema changes placed on every destination",
                ["migration"]).add_metric([name], float(d["changes"]["applied"]))

    def _steering(self, f: Families, name: str) -> None:
        """What holds the migration back on purpose: `reshard pause`, `reshard throttle`, and the
        copy waiting on its slot's WAL budget (the copy's last copy.wal_paused/resumed per source)."""
        rec = self.co.store.migration(name)
        live = controls_of(rec.settings)
        paused = f.gauge("reshard_paused", "1 while `reshard pause` holds this part of the migration",
                         ["migration", "part"])
        for part in STEERED:
            paused.add_metric([name, part], 1.0 if part in live.paused else 0.0)
        limit = live.throttle.get("max_rows_per_second")
        if limit:
            f.gauge("reshard_throttle_max_rows_per_second", "The rows/s cap `reshard throttle` set (copy and "
                    "complete)", ["migration"]).add_metric([name], float(limit))
        if rec.state == states.State.BUILDING:
            wal_paused = f.gauge("reshard_copy_wal_paused", "1 while the copy from this source waits for its "
                                 "stream to confirm WAL (over the --max-slot-wal budget)", ["migration", "cluster"])
            last: dict[str, str] = {}
            for e in self.co.store.events_since(name, datetime.fromtimestamp(0, UTC),
                                                ("copy.wal_paused", "copy.wal_resumed")):
                last[e["detail"].get("cluster", "")] = e["event"]
            for cluster, event in sorted(last.items()):
                wal_paused.add_metric([name, cluster], 1.0 if event == "copy.wal_paused" else 0.0)

    def _routers(self, f: Families) -> None:
        """Routers that reported in the last minute (reshard/router.py): counters per router,
        shadow-read outcomes per table summed over them."""
        ops = f.counter("reshard_router_operations", "A router's operations by kind: reads, writes, errors, "
                        "fence_rejections, hedged, hedge_won", ["router", "kind"])
        shadow: dict[tuple[str, str], int] = {}
        for r in self.co.store.router_reports(60.0):
            for kind, v in r["counters"].items():
                ops.add_metric([r["router"], kind], float(v))
            for table, counts in r["shadow"].items():
                for outcome, v in counts.items():
                    shadow[(table, outcome)] = shadow.get((table, outcome), 0) + int(v)
        reads = f.counter("reshard_router_shadow_reads", "Shadow reads by outcome (sampled, matched, differed, lag, "
                          "mismatches, dropped, errors), summed over the routers reporting", ["table", "outcome"])
        for (table, outcome), v in sorted(shadow.items()):
            reads.add_metric([table, outcome], float(v))

    def _streams(self, f: Families, name: str) -> None:
        streams, topics = self.co.streams(name)
        retained = f.gauge("reshard_slot_wal_retained_bytes", "WAL the stream's slot keeps on its cluster",
                           ["migration", "stream", "cluster", "slot"])
        unconfirmed = f.gauge("reshard_slot_unconfirmed_bytes", "WAL written after the slot's confirmed position",
                              ["migration", "stream", "cluster", "slot"])
        keep = f.gauge("reshard_slot_wal_keep_limit_bytes", "The cluster's max_slot_wal_keep_size: WAL a slot may "
                       "keep before PostgreSQL invalidates it (no series when unlimited)",
                       ["migration", "stream", "cluster", "slot"])
        active = f.gauge("reshard_slot_active", "1 while a connector streams from the slot",
                         ["migration", "stream", "cluster", "slot"])
        lost = f.gauge("reshard_slot_lost", "1 once a failover lost the stream's slot (the stream cannot prove "
                       "catch-up: reshard/proof/lineage.py)", ["migration", "stream", "cluster", "slot"])
        timeline = f.gauge("reshard_slot_timeline", "The primary's timeline the stream's slot is on (a failover "
                           "that carried it moves it on)", ["migration", "stream", "cluster", "slot"])
        origins = self.co.store.slot_origins(name)
        for st in streams:
            o = origins.get(st.slot)
            if o is not None:
                labels = [name, f"{st.direction}:{st.cluster}", st.cluster, st.slot]
                lost.add_metric(labels, 1.0 if o["lineage"] == "lost" else 0.0)
                timeline.add_metric(labels, float(o["timeline"]))
        for s in slot_lag(self.co.config, streams):
            labels = [name, s.stream, s.cluster, s.slot]
            if s.retained_bytes is not None:
                retained.add_metric(labels, float(s.retained_bytes))
                unconfirmed.add_metric(labels, float(s.lag_bytes or 0))
            if s.keep_limit_bytes is not None:
                keep.add_metric(labels, float(s.keep_limit_bytes))
            active.add_metric(labels, 1.0 if s.active else 0.0)
        client = ConnectClient(self.co.config.connect, timeout=5.0)
        cstate = f.gauge("reshard_connector_state", "1 for the connector's current state (one series per state)",
                         ["migration", "stream", "connector", "state"])
        tstate = f.gauge("reshard_connector_tasks", "The connector's tasks in each state",
                         ["migration", "stream", "connector", "state"])
        for s in streams:
            st = client.status(s.connector) or {}
            current = st.get("connector", {}).get("state", "MISSING")
            tasks = [t.get("state") for t in st.get("tasks", [])]
            labels = [name, f"{s.direction}:{s.cluster}", s.connector]
            for state in CONNECTOR_STATES:
                cstate.add_metric([*labels, state], 1.0 if state == current else 0.0)
                tstate.add_metric([*labels, state], float(tasks.count(state)))
        with KafkaAdmin(self.co.config.kafka) as admin:
            behind = admin.partition_lag(applier_group(name), topics)
            dead = sum(admin.end_offsets([dlq_topic(name)]).values())
        lag = f.gauge("reshard_consumer_lag_records", "Records in the partition after the appliers' committed "
                      "offset", ["migration", "topic", "partition"])
        for (topic, part), n in sorted(behind.items()):
            lag.add_metric([name, topic, str(part)], float(n))
        f.counter("reshard_dead_letters", "Records in the migration's dead-letter topic",
                  ["migration"]).add_metric([name], float(dead))

    def _fences(self, f: Families) -> None:
        mode = f.gauge("reshard_fence_mode", "1 for each table's installed fence mode on a cluster (steady, "
                       "switching: the write pause, fenced)", ["cluster", "table", "mode", "epoch"])
        since = f.gauge("reshard_fence_installed_timestamp_seconds", "When the table's current fence was "
                        "installed", ["cluster", "table", "mode"])
        for c in self.co.config.clusters.values():
            try:
                with connect(c.dsn, f"cluster {c.name}", autocommit=True) as conn:
                    rows = fence.state(conn)
            except Exception as exc:
                ERRORS.labels("fences").inc()
                log.warning("exporter: could not read fences on %s: %s", c.name, exc)
                continue
            for r in rows:
                if r["active"]:
                    mode.add_metric([c.name, r["table"], r["mode"], str(r["epoch"])], 1.0)
                    since.add_metric([c.name, r["table"], r["mode"]], _ts(r["installed_at"]))


def run(coordinator, stop: threading.Event, *, port: int, address: str = "127.0.0.1",
        interval: float = DEFAULT_INTERVAL_S, migrations: list[str] | None = None) -> None:
    """Serve ``/metrics`` on ``address:port`` and refresh every ``interval`` seconds until ``stop``."""
    collector = MigrationCollector(coordinator, migrations)
    collector.refresh()
    REGISTRY.register(collector)
    start_http_server(port, addr=address)
    log.info("exporter: serving http://%s:%d/metrics, refreshing every %.1fs", address, port, interval)
    try:
        while not stop.wait(interval):
            collector.refresh()
    finally:
        REGISTRY.unregister(collector)
