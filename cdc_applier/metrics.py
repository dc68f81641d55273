"""The applier's Prometheus metrics, served on ``/metrics`` by every ``reshard apply`` worker.

Measured where the work happens, never estimated: records read and events applied are
counted as they are, a batch's apply time is observed around its target transactions,
lag in seconds is the source commit time (Debezium's ``source.ts_ms``) of the newest
change applied against the clock when it was applied, and lag in records per partition
is librdkafka's own consumer lag (from its statistics, every 5 s).
"""

from __future__ import annotations

import json
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from reshard.errors import ConfigError

STATS_INTERVAL_MS = 5000

RECORDS = Counter("reshard_applier_records", "Kafka records read by this worker", ["migration", "stream"])
APPLIED = Counter("reshard_applier_events_applied", "Change events applied, by destination cluster",
                  ["migration", "cluster"])
SKIP_REASONS = ("stale", "echo", "not_moving")
SKIPPED = Counter("reshard_applier_events_skipped", "Records that changed nothing, by why: stale (a replay or a "
                  "newer change in the batch), echo (the other direction's own write), not_moving (a key that "
                  "stays where it is)", ["migration", "reason"])
DEAD_LETTERS = Counter("reshard_applier_dead_letters", "Records sent to the dead-letter topic", ["migration"])
BATCH_SECONDS = Histogram("reshard_applier_batch_seconds", "Time to apply one batch on its target clusters and "
                          "flush its dead letters", ["migration"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LAG_SECONDS = Gauge("reshard_applier_lag_seconds", "Source commit to applied, for the newest change this worker "
                    "applied from the stream; 0 while its partitions have nothing to read", ["migration", "stream"])
PARTITION_LAG = Gauge("reshard_applier_partition_lag_records", "Records in the partition after this worker's "
                      "position (librdkafka's consumer lag)", ["migration", "topic", "partition"])
LAST_BATCH = Gauge("reshard_applier_last_batch_timestamp_seconds", "When this worker last applied a batch",
                   ["migration"])
PAUSED = Gauge("reshard_applier_paused", "1 while this worker (`apply --on-pause wait`) waits on input it will not "
               "guess about; `reshard status` says what", ["migration"])
UP = Gauge("reshard_applier_up", "1 while this worker runs its loop", ["migration", "worker"])


served_port = 0  # where this process serves /metrics (0: nowhere); workers report it in their heartbeat


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``address``:``port`` from a daemon thread (0: do not serve)."""
    global served_port
    if port:
        start_http_server(port, addr=address)
        served_port = port


def serve_first_free(ports: list[int], address: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` on the first of ``ports`` free on ``address`` (several workers on
    one host take the next ones); returns it (0: asked not to serve). ConfigError when
    none is free."""
    reason = ""
    for port in ports:
        try:
            serve(port, address)
            return port
        except OSError as exc:
            reason = exc.strerror or str(exc)
    raise ConfigError(f"cannot serve metrics on {address}:{'/'.join(map(str, ports))} ({reason}): "
                      "pass --metrics-port with a free port, or 0")


class WorkerMetrics:
    """The metrics of one applier worker, labelled with its migration."""

    def __init__(self, migration: str, worker: str):
        self.migration = migration
        self.worker = worker
        self._partition_lag: dict[tuple[str, str], int] = {}
        self._lagging: dict[str, float] = {}  # stream -> lag in seconds of its newest applied change
        # series that exist from the start at 0, so rate() and increase() see their first change
        for reason in SKIP_REASONS:
            SKIPPED.labels(migration, reason)
        DEAD_LETTERS.labels(migration)

    def running(self, up: bool) -> None:
        UP.labels(self.migration, self.worker).set(1 if up else 0)

    def read(self, stream: str, n: int = 1) -> None:
        RECORDS.labels(self.migration, stream).inc(n)

    def skipped(self, reason: str, n: int = 1) -> None:
        if n:
            SKIPPED.labels(self.migration, reason).inc(n)

    def applied(self, cluster: str, n: int) -> None:
        if n:
            APPLIED.labels(self.migration, cluster).inc(n)

    def dead_letter(self) -> None:
        DEAD_LETTERS.labels(self.migration).inc()

    def batch(self, seconds: float, newest_commit_ms: dict[str, int]) -> None:
        """A batch was applied and committed on its targets."""
        BATCH_SECONDS.labels(self.migration).observe(seconds)
        now = time.time()
        LAST_BATCH.labels(self.migration).set(now)
        for stream, ms in newest_commit_ms.items():
            lag = max(0.0, now - ms / 1000.0)
            LAG_SECONDS.labels(self.migration, stream).set(lag)
            self._lagging[stream] = lag

    def idle(self) -> None:
        """A poll found nothing to read: this worker's partitions are drained."""
        for stream in self._lagging:
            LAG_SECONDS.labels(self.migration, stream).set(0.0)
            self._lagging[stream] = 0.0

    def lag_s(self) -> dict[str, float]:
        """Stream -> the lag this worker last measured on it (0 once its partitions are drained)."""
        return {k: round(v, 3) for k, v in self._lagging.items()}

    def max_lag_s(self) -> float | None:
        """The largest lag this worker last measured (None before its first batch)."""
        return max(self._lagging.values()) if self._lagging else None

    def kafka_stats(self, raw: str) -> None:
        """librdkafka's statistics callback: consumer lag per assigned partition."""
        try:
            stats = json.loads(raw)
        except ValueError:
            return
        for topic, t in (stats.get("topics") or {}).items():
            for part, p in (t.get("partitions") or {}).items():
                lag = p.get("consumer_lag", -1)
                if part != "-1" and lag is not None and lag >= 0:
                    PARTITION_LAG.labels(self.migration, topic, part).set(lag)
                    self._partition_lag[(topic, part)] = lag

    def records_lag(self) -> int | None:
        """Records after this worker's position in its partitions, at librdkafka's last
        statistics (None before the first)."""
        return sum(self._partition_lag.values()) if self._partition_lag else None
