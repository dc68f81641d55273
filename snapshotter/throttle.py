"""Bandwidth control for the snapshot copy: a fixed ceiling and an adaptive one.

The copy competes with the application for the source's CPU and disks. A fixed limit
(rows/s or bytes/s) caps it. The adaptive throttle (as gh-ost and Vitess throttle on
replica lag) holds the copy to a latency budget the user states (``--max-latency-impact``,
default 5 ms, from seed 004's "< 10 ms of p99 impact"): every 20 ms it samples the
application's transactions in flight on the source (their age, from pg_stat_activity) and
times its own sampling statement; every look it compares the 95th percentile of the last
two seconds with the same figure before the copy, and backs off multiplicatively when the
difference passes the budget (or a physical replica of the source lags too far), grows
back while it does not, and lifts itself once the copy cannot use what it allows.

What the application sees is the measure, not a relative change of a sub-millisecond
probe: a copy always makes a probe somewhat slower, which held a copy on an idle source
near its floor. With no application session on the source the copy runs unthrottled (there
is no one to spare; replicas and the slot's WAL budget still hold it); an application too
sparse to sample in flight is judged by the sampling statement's own round trip; a role
that cannot see other users' sessions (neither superuser nor pg_read_all_stats) is judged
by that round trip always. An application that appears mid-copy, with no latency measured
before the copy, is measured with the copy held at its floor for one window first.

Every copy thread shares one throttle and asks it before handing a chunk of COPY data
to the target. A rows/s limit is converted to bytes with the row width measured so far.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from reshard.live_control import LiveControl

SAMPLE_EVERY_S = 0.02  # the application's transactions in flight are sampled this often
LOOK_EVERY_S = 0.5  # how often the adaptive throttle judges the samples
WINDOW_S = 2.0  # ... of this many last seconds
QUANTILE = 95  # the percentile of a window compared with the one before the copy
BASELINE_S = 1.0  # sampled before the copy starts
MIN_SAMPLES = 20  # fewer transactions seen in flight in a window: judged by the sampling statement instead
BACKOFF = 0.5  # the adaptive limit is multiplied by this on a look where the budget is passed
RECOVER = 1.25  # ... and by this on one within it
FLOOR_BYTES_S = 512 << 10  # never slower than this: the copy always progresses
START_BYTES_S = 1 << 20  # with an application on the source, the limit starts here and grows within the budget
DEFAULT_LATENCY_IMPACT_MS = 5.0  # half of seed 004's "< 10 ms of p99 impact" for a ledger

# the sessions that are the application: client backends other than reshard's and Debezium's (a
# session still starting has no name yet: a copy session connecting would count)
APPLICATION = ("backend_type = 'client backend' AND state <> 'starting' AND pid <> pg_backend_pid() "
               "AND NOT pid = ANY(%(own)s) "
               "AND application_name NOT LIKE 'reshard%%' AND application_name NOT LIKE 'Debezium%%'")
SAMPLE_SQL = ("SELECT coalesce(array_agg(extract(epoch FROM clock_timestamp() - xact_start) * 1000) "
              "FILTER (WHERE state <> 'idle' AND xact_start IS NOT NULL), '{}'), "
              "count(*) FILTER (WHERE state_change > clock_timestamp() - make_interval(secs => %(window)s)) "
              f"FROM pg_stat_activity WHERE {APPLICATION}")
SEES_ALL_SQL = ("SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') "
                "FROM pg_roles WHERE rolname = current_user")
LONG_XACT_MS = 60_000.0  # a transaction open longer is a batch job or a forgotten session, not latency


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
    # slow down when the application's 95th-percentile latency on the source is this much above before the copy
    max_latency_impact_ms: float = DEFAULT_LATENCY_IMPACT_MS
    max_replica_lag_s: float = 10.0  # ... or when a physical replica of the source lags more
    # the WAL the stream's slot may keep on the source before the copy pauses (None: 80 % of the
    # source's max_slot_wal_keep_size, past which PostgreSQL would invalidate the slot; no limit if unset)
    max_slot_wal_bytes: int | None = None


def ramp_seconds(nbytes: float, ceiling_bytes_s: float) -> float:
    """How long the adaptive throttle takes to let ``nbytes`` through when an application runs on
    the source and stays within the budget: it starts at START_BYTES_S and grows by RECOVER every
    LOOK_EVERY_S until the copy's own ceiling (the source's read rate) binds. `reshard check`
    predicts the default copy beside a running application so (on an idle source the copy is
    not held back)."""
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


def _percentile(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[QUANTILE - 1] if len(values) > 1 else values[0]


class LatencySamples:
    """The last WINDOW_S of samples: the ages of the application's transactions in flight, the
    sampling statement's own round trip, and whether any application session did anything."""

    def __init__(self, sees_all: bool = True):
        self.sees_all = sees_all  # False: other users' sessions are hidden, so presence is unknown
        self._ages: deque[tuple[float, float]] = deque()
        self._trips: deque[tuple[float, float]] = deque()
        self._present_at = -1e9

    def add(self, now: float, ages: list[float], present: bool, trip_ms: float) -> None:
        self._ages.extend((now, a) for a in ages if a < LONG_XACT_MS)
        self._trips.append((now, trip_ms))
        if present or ages:
            self._present_at = now
        for q in (self._ages, self._trips):
            while q and q[0][0] < now - WINDOW_S:
                q.popleft()

    def judge(self, now: float) -> tuple[str, float | None]:
        """("idle", None) with no application session busy within the window; else
        ("application", its transactions' percentile) when enough were seen in flight, or
        ("statement", the sampling statement's percentile)."""
        if self.sees_all and now - self._present_at > WINDOW_S:
            return "idle", None
        ages = [a for _t, a in self._ages]
        if len(ages) >= MIN_SAMPLES:
            return "application", _percentile(ages)
        ms = self.judge_statement()
        return ("statement", ms) if ms is not None else ("idle", None)

    def judge_statement(self) -> float | None:
        """The sampling statement's own round trip, the window's percentile (None: no sample)."""
        trips = [t for _t, t in self._trips]
        return _percentile(trips) if trips else None


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
        self.samples = LatencySamples()
        self.baseline_ms: dict[str, float] = {}  # per measure ("application", "statement"): before the copy
        self.latency_ms: float | None = None  # what the last look measured, and on what
        self.measured_on = ""
        self._own_pids: list[int] = []  # sessions of this copy on the source: not the application
        self.waited_s = 0.0
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._watcher: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        if settings.adaptive and probe_dsn:
            self._start_adaptive()
        self._follow_live()

    def _start_adaptive(self) -> None:
        """Connect the sampler, measure the source before the copy (BASELINE_S, cut short on a
        source without an application, where there is nothing to compare), start the watcher."""
        if self._conn is None:
            assert self._probe_dsn is not None
            self._conn = psycopg.connect(self._probe_dsn, autocommit=True, connect_timeout=5,
                                         application_name="reshard-copy-throttle")
            row = self._conn.execute(SEES_ALL_SQL).fetchone()
            for _ in range(3):  # a new session's first statements are slower: not the source's latency
                self._sample()
            self.samples = LatencySamples(sees_all=bool(row and row[0]))
            started = time.monotonic()
            while time.monotonic() - started < BASELINE_S:
                self._sample()
                if time.monotonic() - started >= BASELINE_S / 4 and self.samples.judge(time.monotonic())[0] == "idle":
                    break
                time.sleep(SAMPLE_EVERY_S)
            now = time.monotonic()
            self.baseline_ms = {"statement": self.samples.judge_statement() or 0.0}
            kind, ms = self.samples.judge(now)
            if kind == "application" and ms is not None:
                self.baseline_ms["application"] = ms
        idle = self.samples.judge(time.monotonic())[0] == "idle"
        self._adaptive = None if idle else float(START_BYTES_S)
        self.reason = "adaptive, no application on the source" if idle else "adaptive, starting slow"
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="reshard-copy-throttle", daemon=True)
            self._watcher.start()

    def own(self, pid: int) -> None:
        """A session of the copy's own on the source (its backend pid): not the application."""
        with self._lock:
            self._own_pids = [*self._own_pids, pid]

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
                    max_latency_impact_ms=wanted.get("max_latency_impact_ms", base.max_latency_impact_ms),
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
                "latency_budget_ms": self.settings.max_latency_impact_ms if self.settings.adaptive else None,
                "measured_on": self.measured_on or None,
                "baseline_ms": self.baseline_ms.get(self.measured_on) and round(self.baseline_ms[self.measured_on], 2),
                "latency_ms": self.latency_ms and round(self.latency_ms, 2), "waited_s": round(self.waited_s, 1),
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
    def _sample(self) -> None:
        assert self._conn is not None
        t = time.perf_counter()
        row = self._conn.execute(SAMPLE_SQL, {"own": self._own_pids, "window": WINDOW_S}).fetchone()
        assert row is not None  # an aggregate: always one row
        ages, present = row
        trip = (time.perf_counter() - t) * 1000
        self.samples.add(time.monotonic(), [float(a) for a in ages], bool(present), trip)

    def replica_lag_s(self) -> float:
        """The replay lag of the source's physical replicas. A logical slot's walsender (Debezium's
        stream, a subscription) reports replay only when its consumer confirms, so its lag grows
        while the application writes tables the stream does not carry: not a replica."""
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT coalesce(max(extract(epoch FROM replay_lag)), 0) FROM pg_stat_replication "
            "WHERE pid NOT IN (SELECT active_pid FROM pg_replication_slots "
            "WHERE slot_type = 'logical' AND active_pid IS NOT NULL) "
            "AND application_name NOT LIKE 'reshard%%'").fetchone()
        return float(row[0] or 0) if row else 0.0

    def _watch(self) -> None:
        next_look = time.monotonic() + LOOK_EVERY_S
        while not self._stop.wait(SAMPLE_EVERY_S):
            try:
                self._sample()
                if time.monotonic() < next_look:
                    continue
                next_look = time.monotonic() + LOOK_EVERY_S
                lag = self.replica_lag_s()
            except psycopg.Error:
                continue  # a source that went away fails the copy itself, with its own message
            kind, ms = self.samples.judge(time.monotonic())
            if kind == "application" and kind not in self.baseline_ms:
                kind, ms = "statement", self.samples.judge_statement()  # no application figure before the copy
            if self.settings.adaptive:  # `reshard throttle --no-adaptive` may have turned it off
                impact = None if ms is None else ms - self.baseline_ms.get(kind, ms)
                self.latency_ms, self.measured_on = ms, kind
                self.look(impact, lag, kind)

    def look(self, impact_ms: float | None, lag: float, measured_on: str = "application") -> None:
        """One look at the source: back off if the application's latency grew past the budget
        (``impact_ms``: the window's percentile minus the one before the copy; None: no
        application on the source) or a replica lags, grow back (and lift) if not."""
        s = self.settings
        before = (self.reason, self.limit() is None)
        suffering = None
        if impact_ms is not None and impact_ms > s.max_latency_impact_ms:
            what = "the application's transactions" if measured_on == "application" else "a statement"
            suffering = (f"{what} p{QUANTILE} +{impact_ms:.1f} ms on the source, over the budget "
                         f"{s.max_latency_impact_ms:g} ms")
        elif lag > s.max_replica_lag_s:
            suffering = f"a physical replica of the source lags {lag:.0f} s"
        if suffering:
            self.reason = f"adaptive, {suffering}"
            self._adaptive = max(FLOOR_BYTES_S, (self._adaptive or self._recent_rate()) * BACKOFF)
        elif impact_ms is None and self._adaptive is None:
            self.reason = "adaptive, no application on the source"
        elif self._adaptive is not None:
            self.reason = "adaptive, within the latency budget: growing"
            self._adaptive *= RECOVER
            flowing = self._flowing_since is not None and self._clock() - self._flowing_since >= 2.0
            if (flowing and self._adaptive > 2 * max(self._recent_rate(), FLOOR_BYTES_S)) or impact_ms is None:
                self._adaptive = None  # it no longer binds (the copy cannot use more), or no one to spare
                self.reason = "adaptive, no application on the source" if impact_ms is None else self.reason
        if (self.reason, self.limit() is None) != before:  # said once per change of reason, not per look
            self.on_change(self.describe())

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        for conn in (self._conn, self._slot_conn):
            if conn is not None:
                conn.close()
