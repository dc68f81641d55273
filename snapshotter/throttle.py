"""Bandwidth control for the snapshot copy: a fixed ceiling and an adaptive one.

The copy competes with the application for the source's CPU and disks. A fixed limit
(rows/s or bytes/s) caps it. The adaptive throttle (as gh-ost and Vitess throttle on
replica lag) watches the source while the copy runs and slows the copy when the
source gets slower: a probe query's latency against the latency measured before the
copy began, and the replay lag of the source's own physical replicas. It starts slow
(a copy shorter than its first looks must not hit the source at full speed either),
grows while the source stays healthy, backs off multiplicatively when it suffers, and
so settles near the rate at which the source starts to suffer; it lifts itself once
the copy cannot use what it allows.

Every copy thread shares one throttle and asks it before handing a chunk of COPY data
to the target. A rows/s limit is converted to bytes with the row width measured so far.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from reshard.live_control import LiveControl

LOOK_EVERY_S = 0.5  # how often the adaptive throttle looks at the source
PROBES = 5  # probe queries per look; their median is the look's latency
BACKOFF = 0.5  # the adaptive limit is multiplied by this on a look where the source suffers
RECOVER = 1.1  # ... and by this on a healthy one
FLOOR_BYTES_S = 512 << 10  # never slower than this: the copy always progresses
START_BYTES_S = 1 << 20  # the adaptive limit starts here and grows while the source stays healthy
BASELINE_LOOKS = 4  # looks before the copy starts, for the probe's baseline
PROBE_SLACK_MS = 0.2  # below this much slower, a sub-millisecond probe is noise, not suffering


UNTHROTTLED = "unthrottled"
SLOT_LOOK_EVERY_S = 1.0  # how often the copy looks at its slot's WAL against the budget
SLOT_RESUME_AT = 0.5  # a copy paused by the WAL budget resumes below this share of it
SLOT_SLOW_AT = 0.8  # ... and runs at the floor above this share
SLOT_KEEP_SHARE = 0.8  # the default budget: this share of max_slot_wal_keep_size


@dataclass(frozen=True)
class ThrottleSettings:
    max_rows_per_s: float | None = None
    max_bytes_per_s: float | None = None
    adaptive: bool = True
    latency_tolerance: float = 0.2  # slow down when the probe is this much slower than before the copy
    max_replica_lag_s: float = 10.0  # ... or when a physical replica of the source lags more
    # the WAL the stream's slot may keep on the source before the copy pauses (None: 80 % of the
    # source's max_slot_wal_keep_size, past which PostgreSQL would invalidate the slot; no limit if unset)
    max_slot_wal_bytes: int | None = None


def ramp_seconds(nbytes: float, ceiling_bytes_s: float) -> float:
    """How long the adaptive throttle takes to let ``nbytes`` through when the source stays
    healthy: it starts at START_BYTES_S and grows by RECOVER every LOOK_EVERY_S until the copy's
    own ceiling (the source's read rate) binds. `reshard check` predicts the default copy so."""
    import math

    if nbytes <= 0:
        return 0.0
    k = math.log(RECOVER) / LOOK_EVERY_S  # the limit is START_BYTES_S * e^(k t)
    start = min(float(START_BYTES_S), ceiling_bytes_s)
    t_cap = math.log(ceiling_bytes_s / start) / k if ceiling_bytes_s > start else 0.0
    ramped = start * (math.exp(k * t_cap) - 1) / k if t_cap else 0.0  # bytes through before the ceiling
    if nbytes <= ramped:
        return math.log(1 + nbytes * k / start) / k
    return t_cap + (nbytes - ramped) / ceiling_bytes_s


class CopyThrottle:
    """A token bucket over bytes, shared by the copy threads (and by `complete`'s deletes, with
    ``part="complete"``: the same adaptive probe, `reshard throttle` and `reshard pause`)."""

    def __init__(self, settings: ThrottleSettings, probe_dsn: str | None = None,
                 on_change: Callable[[str], None] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], object] | None = None,
                 live: LiveControl | None = None, slot: str | None = None,
                 on_wal_budget: Callable[[bool, int, int], None] | None = None, part: str = "copy"):
        self.settings = settings
        self.part = part  # what `reshard pause` names it by
        self.slot = slot  # the stream's slot on this source, whose WAL the budget bounds
        self._slot_conn: psycopg.Connection[Any] | None = None
        self._slot_at = -1e9
        self.slot_wal_bytes: int | None = None  # what the slot kept at the last look
        self.wal_budget: int | None = None  # in force at the last look
        self.started_with = settings  # what the command line said; `reshard throttle` overrides it
        self.live = live
        self._live_throttle: dict = {}
        self._probe_dsn = probe_dsn
        self.on_change = on_change or (lambda _text: None)
        # told (paused, unconfirmed bytes, budget) when the WAL budget pauses or resumes the copy
        self.on_wal_budget = on_wal_budget or (lambda _paused, _kept, _budget: None)
        self._clock = clock
        self._lock = threading.Lock()
        self._rows = self._bytes = 0
        self.width_hint = 100.0  # bytes a row, until a batch measured it (see ``hint_width``)
        self._allowance = 0.0
        self._last = clock()
        self._sent: list[tuple[float, int]] = []  # (when, bytes) over the last two seconds
        self._flowing_since: float | None = None  # the first chunk's time
        self._adaptive: float | None = None  # bytes/s the adaptive throttle allows; None: no limit
        self.reason = ""
        self.baseline_ms: float | None = None
        self.latency_ms: float | None = None
        self.waited_s = 0.0
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._watcher: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        if settings.adaptive and probe_dsn:
            self._start_adaptive()
        self._follow_live()

    def _start_adaptive(self) -> None:
        if self._conn is None:
            assert self._probe_dsn is not None
            self._conn = psycopg.connect(self._probe_dsn, autocommit=True, connect_timeout=5,
                                         application_name="reshard-copy-throttle")
            self.baseline_ms = statistics.median(self._probe() for _ in range(BASELINE_LOOKS))
        self._adaptive = float(START_BYTES_S)
        self.reason = "adaptive, starting slow"
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="reshard-copy-throttle", daemon=True)
            self._watcher.start()

    def _follow_live(self) -> None:
        """`reshard throttle` while the copy runs: its limits replace the command line's (a
        cleared throttle returns to them); turning adaptive on starts the source's probe."""
        if self.live is None:
            return
        wanted = self.live.now().throttle
        if wanted == self._live_throttle:
            return
        self._live_throttle = wanted
        base = self.started_with
        adaptive = wanted.get("adaptive")
        s = replace(base, max_rows_per_s=wanted.get("max_rows_per_second", base.max_rows_per_s),
                    max_bytes_per_s=wanted.get("max_bytes_per_second", base.max_bytes_per_s),
                    max_slot_wal_bytes=wanted.get("max_slot_wal_bytes", base.max_slot_wal_bytes),
                    adaptive=base.adaptive if adaptive is None else bool(adaptive))
        with self._lock:
            self.settings = s
            if not s.adaptive:
                self._adaptive = None
                self.reason = ""
        if s.adaptive and self._adaptive is None and self._probe_dsn:
            self._start_adaptive()
        self.on_change(self.describe() + " (reshard throttle)")

    # ---- what holds now ---------------------------------------------------------------------
    def _fixed(self) -> float | None:
        s, limits = self.settings, []
        if s.max_bytes_per_s:
            limits.append(float(s.max_bytes_per_s))
        if s.max_rows_per_s:
            width = self._bytes / self._rows if self._rows else self.width_hint
            limits.append(s.max_rows_per_s * width)
        return min(limits) if limits else None

    def limit(self) -> float | None:
        """Bytes/s allowed now (None: unlimited)."""
        fixed, adaptive = self._fixed(), self._adaptive
        if fixed is None or adaptive is None:
            return adaptive if fixed is None else fixed
        return min(fixed, adaptive)

    def describe(self) -> str:
        """One phrase for progress and status: the limit and why."""
        limit = self.limit()
        if limit is None:
            return UNTHROTTLED
        why = self.reason if self._adaptive is not None and self._adaptive <= (self._fixed() or limit) else (
            f"--max-rows-per-second {self.settings.max_rows_per_s:g}" if self.settings.max_rows_per_s
            else f"--max-bytes-per-second {self.settings.max_bytes_per_s:g}")
        return f"throttled to {limit / (1 << 20):.1f} MiB/s: {why}"

    def summary(self) -> dict:
        limit = self.limit()
        return {"limit_bytes_per_s": round(limit) if limit else None, "state": self.describe(),
                "probe_baseline_ms": self.baseline_ms and round(self.baseline_ms, 2),
                "probe_ms": self.latency_ms and round(self.latency_ms, 2), "waited_s": round(self.waited_s, 1),
                "slot_wal_bytes": self.slot_wal_bytes, "slot_wal_budget_bytes": self.wal_budget}

    # ---- the bucket ---------------------------------------------------------------------------
    def take(self, nbytes: int) -> None:
        """Return once ``nbytes`` may go to the target under the current limit (and the copy is
        not paused by `reshard pause`)."""
        if self.live is not None:
            self.waited_s += self.live.wait_while_paused(self.part)
            self._follow_live()
        self._guard_slot()
        while True:
            with self._lock:
                now = self._clock()
                limit = self.limit()
                wait = 0.0
                if limit is not None:
                    # at most a second's worth saves up: an idle spell is not a burst to come
                    self._allowance = min(limit, self._allowance + (now - self._last) * limit)
                    if self._allowance <= 0:
                        wait = min(1.0, (nbytes - self._allowance) / limit)
                    else:
                        self._allowance -= nbytes  # may go negative: the next chunk waits it off
                self._last = now
                if not wait:
                    self._sent = [(t, n) for t, n in self._sent if now - t <= 2.0] + [(now, nbytes)]
                    if self._flowing_since is None:
                        self._flowing_since = now
                    return
            self.waited_s += wait
            self._sleep(wait)

    # ---- the slot's WAL budget --------------------------------------------------------------
    def _retained(self) -> int | None:
        """WAL bytes the stream has not confirmed on the source now (None without a slot, or
        unreadable): what the slot will keep, whatever the stream does not take. Judged on
        the confirmed position, not on restart_lsn, which PostgreSQL moves only at its next
        restart point (a running-transactions record): a stream that caught up lets the copy
        go on at once, and the WAL goes at that point."""
        if self.slot is None or self._probe_dsn is None:
            return None
        try:
            if self._slot_conn is None or self._slot_conn.closed:
                self._slot_conn = psycopg.connect(self._probe_dsn, autocommit=True, connect_timeout=5,
                                                  application_name="reshard-copy-wal-budget")
            row = self._slot_conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
                "(SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size') "  # MB, or -1
                "FROM pg_replication_slots WHERE slot_name = %s",
                (self.slot,)).fetchone()
        except psycopg.Error:
            return None
        if row is None:
            return None
        keep_mb = int(row[1])
        self.wal_budget = self.settings.max_slot_wal_bytes or (
            int(keep_mb * (1 << 20) * SLOT_KEEP_SHARE) if keep_mb > 0 else None)
        self.slot_wal_bytes = int(row[0]) if row[0] is not None else None
        return self.slot_wal_bytes

    def _guard_slot(self) -> None:
        """Above the WAL budget the copy pauses until the stream has confirmed enough for the
        slot to keep less than half of it (Debezium and the appliers catching up); above 80 %
        it runs at the floor. What the copy waits for is said once, and when it resumes."""
        now = self._clock()
        if now - self._slot_at < SLOT_LOOK_EVERY_S:
            return
        self._slot_at = now
        kept = self._retained()
        budget = self.wal_budget
        if kept is None or budget is None:
            return
        if kept <= budget:
            slow = kept > budget * SLOT_SLOW_AT
            if slow != self.reason.startswith("slot WAL"):
                with self._lock:
                    self.reason = (f"slot WAL {kept / (1 << 20):,.0f} MiB near the budget {budget / (1 << 20):,.0f} "
                                   "MiB: at the floor") if slow else ""
                    self._adaptive = float(FLOOR_BYTES_S) if slow else (float(START_BYTES_S) if self.settings.adaptive
                                                                         else None)
                self.on_change(self.describe())
            return
        self.on_wal_budget(True, kept, budget)
        self.on_change(f"paused: slot {self.slot} holds {kept / (1 << 20):,.0f} MiB of WAL the stream has not "
                       f"confirmed, over the budget {budget / (1 << 20):,.0f} MiB (--max-slot-wal); waiting for it")
        while kept is not None and budget is not None and kept > budget * SLOT_RESUME_AT and not self._stop.is_set():
            self._sleep(SLOT_LOOK_EVERY_S)
            self.waited_s += SLOT_LOOK_EVERY_S
            if self.live is not None:
                self._follow_live()
            kept, budget = self._retained(), self.wal_budget
        self.on_wal_budget(False, kept or 0, budget or 0)
        self.on_change(f"resumed: the stream confirmed all but {(kept or 0) / (1 << 20):,.0f} MiB")

    def hint_width(self, conn: psycopg.Connection[Any], tables: list[str]) -> None:
        """The tables' bytes a row from the catalog (heap and TOAST over the estimated rows):
        the first batch's rows/s limit is about right before any batch measured it."""
        row = conn.execute("SELECT sum(pg_table_size(c.oid))::float8 / greatest(sum(c.reltuples), 1) "
                           "FROM pg_class c WHERE c.oid = ANY(%s::regclass[])", (tables,)).fetchone()
        if row and row[0]:
            self.width_hint = float(row[0])

    def landed(self, rows: int, nbytes: int) -> None:
        """A batch committed: its row width converts a rows/s limit to bytes."""
        with self._lock:
            self._rows += rows
            self._bytes += nbytes

    def _recent_rate(self) -> float:
        now = self._clock()
        with self._lock:
            return sum(n for t, n in self._sent if now - t <= 2.0) / 2.0

    # ---- the adaptive part ----------------------------------------------------------------------
    def _probe(self) -> float:
        assert self._conn is not None
        samples = []
        for _ in range(PROBES):
            t = time.perf_counter()
            self._conn.execute("SELECT count(*) FROM pg_stat_activity")
            samples.append((time.perf_counter() - t) * 1000)
        return statistics.median(samples)

    def _replica_lag_s(self) -> float:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT coalesce(max(extract(epoch FROM replay_lag)), 0) FROM pg_stat_replication "
            "WHERE application_name NOT LIKE 'reshard%%'").fetchone()
        return float(row[0] or 0) if row else 0.0

    def _watch(self) -> None:
        while not self._stop.wait(LOOK_EVERY_S):
            try:
                latency, lag = self._probe(), self._replica_lag_s()
            except psycopg.Error:
                continue  # a source that went away fails the copy itself, with its own message
            if self.settings.adaptive:  # `reshard throttle --no-adaptive` may have turned it off
                self.look(latency, lag)

    def look(self, latency: float, lag: float) -> None:
        """One look at the source: back off if it suffers, recover if not."""
        s = self.settings
        self.latency_ms = latency
        base = self.baseline_ms or latency
        before = (self.reason, self.limit() is None)
        suffering = None
        if latency > base * (1 + s.latency_tolerance) + PROBE_SLACK_MS:
            suffering = f"source probe {latency:.1f} ms vs {base:.1f} ms before the copy"
        elif lag > s.max_replica_lag_s:
            suffering = f"a physical replica of the source lags {lag:.0f} s"
        if suffering:
            self.reason = f"adaptive, {suffering}"
            self._adaptive = max(FLOOR_BYTES_S, (self._adaptive or self._recent_rate()) * BACKOFF)
        elif self._adaptive is not None:
            self.reason = "adaptive, source healthy: growing"
            self._adaptive *= RECOVER
            flowing = self._flowing_since is not None and self._clock() - self._flowing_since >= 2.0
            if flowing and self._adaptive > 2 * max(self._recent_rate(), FLOOR_BYTES_S):
                self._adaptive = None  # it no longer binds: the copy cannot use more
        if (self.reason, self.limit() is None) != before:  # said once per change of reason, not per look
            self.on_change(self.describe())

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        for conn in (self._conn, self._slot_conn):
            if conn is not None:
                conn.close()
