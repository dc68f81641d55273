"""The bake: after the last wave is cut over, watch rollback triggers for a while, roll
back by itself on the first that fires, or declare the bake clean (and complete).

    reshard cutover shop --bake 30m --bake-check ./smoke.sh --complete-after-bake

Every ``interval`` seconds, while reverse replication keeps rollback possible:

- routers: the error rate of the routers' operations (reads and writes, from their
  reports in the control database, reshard/router.py) over the last ``window``
  seconds, and the fence rejections they met since the bake began;
- mismatches: a ``shadow.mismatch`` or ``check.mismatch`` event since the bake began
  (shadow reads, ``verify --continuous``);
- reverse lag: Kafka records of the reverse streams not yet applied to the sources;
- user checks: commands (exit 0 healthy, anything else fires; a timeout fires) and
  Prometheus queries (a non-zero value in the result fires, like an alert expression);
- reconciliation: the migration's reconciliation checks (``--reconcile``), which need a
  consistent point: every ``reconcile_every`` seconds, and once more before a bake is
  declared clean, a probe runs the rollback's write pause (targets fenced, reverse
  streams drained) up to the checks and backs out (orchestrator.reconcile_probe). A
  disagreement fires; the rollback it starts skips the checks it would only fail on
  (its drain still proves every write the targets acknowledged reached the sources).

A trigger is recorded with its evidence (event ``bake.trigger``) and the rollback runs
at once, within the same write-pause budget as the cutover; its result is recorded
too (``bake.rolled_back``). A rollback that cannot run (a gate, the budget) is tried
again each interval until the bake's time is up. A bake that ends with no trigger
is recorded as ``bake.clean``; ``complete_after`` then runs ``complete``. A bake whose
final reconciliation probe could not run (a gate, the budget; three tries) is not
clean: ``unreconciled``, and nothing is completed.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from reshard.config import Config
from reshard.control.states import State
from reshard.control.store import ControlStore
from reshard.cutover.orchestrator import (
    Outcome,
    SwitchOptions,
    SwitchResult,
    reconcile_probe,
    reconcile_rules,
    rollback,
)
from reshard.cutover.steps import SwitchKind
from reshard.errors import MigrationError, ReshardError
from reshard.exit_codes import ExitCode
from reshard.http import Endpoint, HttpClient
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.streams import Direction, Stream
from reshard.proof.catchup import applier_group


class BakeOutcome(StrEnum):
    """How a bake ended."""

    CLEAN = "clean"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    STOPPED = "stopped"
    UNRECONCILED = "unreconciled"
FINAL_PROBE_TRIES = 3
MISMATCH_EVENTS = ("shadow.mismatch", "check.mismatch")


@dataclass
class BakeOptions:
    duration: float                      # seconds
    interval: float = 2.0                # between two looks at the triggers
    window: float = 15.0                 # the routers' error rate is taken over this many seconds
    max_error_rate: float = 0.05         # errors / (reads + writes) in the window
    min_operations: int = 20             # fewer operations in the window: too few to judge
    max_fence_rejections: int = 1000     # since the bake began (stale routers meet the fence for a moment)
    max_reverse_lag: int = 100_000       # Kafka records of the reverse streams not yet applied
    checks: list[str] = field(default_factory=list)   # commands: exit 0 healthy
    prometheus_url: str | None = None
    queries: list[str] = field(default_factory=list)  # PromQL: a non-zero value fires
    check_timeout: float = 30.0
    reconcile_every: float | None = None  # seconds between reconciliation probes (None: only the final one)
    complete_after: bool = False
    complete_kw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trigger:
    name: str        # routers.error_rate, routers.fence_rejections, mismatch, reverse_lag, check, prometheus,
    #                  reconciliation
    detail: str
    evidence: dict[str, Any]


@dataclass
class BakeResult:
    migration: str
    outcome: BakeOutcome
    exit_code: ExitCode
    seconds: float = 0.0
    looks: int = 0
    trigger: Trigger | None = None
    rollback: dict[str, Any] | None = None
    completed: dict[str, Any] | None = None
    reconciliations: list[dict[str, Any]] = field(default_factory=list)  # the probes: outcome, pause, checks
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["exit_code"] = int(self.exit_code)
        return out


def error_rate_trigger(history: deque, now: dict[str, int], window: float, at: float, max_rate: float,
                       min_ops: int) -> Trigger | None:
    """The routers' error rate over the last ``window`` seconds. ``history`` holds
    (time, totals) samples since the bake began (appended here, oldest dropped)."""
    history.append((at, now))
    while len(history) > 2 and at - history[1][0] >= window:
        history.popleft()
    then = history[0][1]
    ops = (now["reads"] - then["reads"]) + (now["writes"] - then["writes"])
    errors = now["errors"] - then["errors"]
    if ops + errors < min_ops:
        return None
    rate = errors / max(1, ops + errors)
    if rate <= max_rate:
        return None
    return Trigger("routers.error_rate", f"the routers' error rate was {rate:.1%} over the last "
                   f"{at - history[0][0]:.0f}s ({errors} errors, {ops} operations; limit {max_rate:.1%})",
                   {"rate": round(rate, 4), "errors": errors, "operations": ops, "limit": max_rate})


class RouterTotals:
    """The routers' counters summed since the bake began: each router counts from the
    first report seen (or from zero if it started after the bake began)."""

    def __init__(self, began: datetime):
        self.began = began
        self.base: dict[str, dict[str, int]] = {}
        self.last: dict[str, dict[str, int]] = {}

    def update(self, reports: list[dict]) -> dict[str, int]:
        for r in reports:
            counters = {k: int(v) for k, v in r["counters"].items()}
            if r["router"] not in self.base:
                self.base[r["router"]] = ({} if r["started_at"] >= self.began else counters)
            self.last[r["router"]] = counters
        total: dict[str, int] = {"reads": 0, "writes": 0, "errors": 0, "fence_rejections": 0}
        for router, counters in self.last.items():
            base = self.base[router]
            for k in total:
                total[k] += max(0, counters.get(k, 0) - base.get(k, 0))
        return total


def run_check(command: str, timeout: float) -> Trigger | None:
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Trigger("check", f"check `{command}` did not finish in {timeout:.0f}s", {"command": command})
    except OSError as exc:
        return Trigger("check", f"check `{command}` could not run: {exc}", {"command": command})
    if done.returncode == 0:
        return None
    return Trigger("check", f"check `{command}` exited {done.returncode}",
                   {"command": command, "exit": done.returncode, "stdout": done.stdout[-500:],
                    "stderr": done.stderr[-500:]})


def query_values(doc: dict[str, Any]) -> list[float]:
    """The values of a /api/v1/query answer: a vector's samples, or a scalar (an empty
    vector is no value: nothing fires, as with an alert expression)."""
    data = doc.get("data") or {}
    if data.get("resultType") == "vector":
        return [float(r["value"][1]) for r in data.get("result", [])]
    if data.get("resultType") == "scalar":
        return [float(data["result"][1])]
    raise ValueError(f"a query for a bake trigger must return a vector or a scalar, not {data.get('resultType')}")


def run_query(url: str, query: str, timeout: float) -> Trigger | None:
    """A PromQL instant query; fires on a non-zero value (or when Prometheus cannot answer)."""
    try:
        values = query_values(HttpClient(Endpoint(url, "Prometheus", timeout=timeout)).call(
            "GET", "/api/v1/query", params={"query": query}) or {})
    except (ReshardError, ValueError) as exc:
        return Trigger("prometheus", f"Prometheus could not answer `{query}`: {exc}", {"query": query})
    firing = [v for v in values if v != 0]
    if not firing:
        return None
    return Trigger("prometheus", f"query `{query}` returned {firing[0]:g}", {"query": query, "values": values[:10]})


class BakeHost(Protocol):
    """What a bake needs of the coordinator that runs it (reshard.coordinator.Coordinator)."""

    config: Config
    store: ControlStore

    def streams(self, name: str) -> tuple[list[Stream], list[str]]: ...
    def complete(self, name: str, **kw: Any) -> Any: ...


class Baker:
    def __init__(self, co: BakeHost, migration: str, opts: BakeOptions, rollback_opts: SwitchOptions,
                 say: Callable[[str], None] | None = None, stop: threading.Event | None = None):
        self.co = co
        self.migration = migration
        self.opts = opts
        self.rollback_opts = rollback_opts
        self.say = say or (lambda _m: None)
        self.stop = stop or threading.Event()

    def triggers(self, began: datetime, totals: RouterTotals, history: deque) -> list[Trigger]:
        """Every trigger that fires now (cheap ones first)."""
        o, store = self.opts, self.co.store
        fired: list[Trigger] = []
        now = totals.update(store.router_reports(60.0))
        t = error_rate_trigger(history, now, o.window, time.monotonic(), o.max_error_rate, o.min_operations)
        if t:
            fired.append(t)
        if now["fence_rejections"] > o.max_fence_rejections:
            fired.append(Trigger("routers.fence_rejections", f"the routers met the fence {now['fence_rejections']} "
                                 f"times since the bake began (limit {o.max_fence_rejections})",
                                 {"fence_rejections": now["fence_rejections"], "limit": o.max_fence_rejections}))
        found = store.events_since(self.migration, began, MISMATCH_EVENTS)
        if found:
            fired.append(Trigger("mismatch", f"{len(found)} key(s) found divergent since the bake began "
                                 f"({found[0]['event']}: {found[0]['detail'].get('table')} "
                                 f"{found[0]['detail'].get('key')})", {"events": found[:10]}))
        lag = self.reverse_lag()
        if lag > o.max_reverse_lag:
            fired.append(Trigger("reverse_lag", f"the reverse streams are {lag:,} records behind "
                                 f"(limit {o.max_reverse_lag:,})", {"records": lag, "limit": o.max_reverse_lag}))
        for command in o.checks:
            t = run_check(command, o.check_timeout)
            if t:
                fired.append(t)
        for query in o.queries:
            assert o.prometheus_url is not None  # checked with the options
            t = run_query(o.prometheus_url, query, o.check_timeout)
            if t:
                fired.append(t)
        return fired

    def reverse_lag(self) -> int:
        streams, topics = self.co.streams(self.migration)
        rev = [s for s in streams if s.direction != Direction.FORWARD]
        rev_topics = [t for t in topics if any(t.startswith(f"{s.prefix}.") for s in rev)]
        if not rev_topics:
            return 0
        with KafkaAdmin(self.co.config.kafka) as admin:
            return sum(admin.partition_lag(applier_group(self.migration), rev_topics).values())

    def run(self) -> BakeResult:
        store, name, o = self.co.store, self.migration, self.opts
        rec = store.migration(name)
        if rec.state != State.BAKING:
            raise MigrationError(f"migration {name} is {rec.state}; a bake watches a migration cut over (baking)")
        began = datetime.now(UTC)
        started = time.monotonic()
        end = started + o.duration
        result = BakeResult(name, BakeOutcome.CLEAN, ExitCode.OK)
        store.record_event(name, "bake.started", seconds=o.duration, checks=o.checks, queries=o.queries,
                           max_error_rate=o.max_error_rate, max_fence_rejections=o.max_fence_rejections,
                           max_reverse_lag=o.max_reverse_lag, complete_after=o.complete_after)
        totals = RouterTotals(began)
        history: deque[tuple[float, dict[str, int]]] = deque()
        rules = reconcile_rules(store, name, self.rollback_opts)
        next_probe = started + o.reconcile_every if rules and o.reconcile_every else float("inf")
        while True:
            fired = self.triggers(began, totals, history)
            result.looks += 1
            if not fired and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + (o.reconcile_every or 0)
                _ran, disagree = self.probe(result, started)
                fired = [disagree] if disagree else []
            if fired:
                return self._fire(result, fired, started, end)
            left = end - time.monotonic()
            if left <= 0 or self.stop.is_set():
                break
            self.say(f"baking {name}: {left:.0f}s left, {result.looks} look(s), no trigger")
            self.stop.wait(min(o.interval, left))
        result.seconds = round(time.monotonic() - started, 1)
        if self.stop.is_set() and time.monotonic() < end:
            result.outcome, result.exit_code = BakeOutcome.STOPPED, ExitCode.OK
            result.message = f"bake stopped after {result.seconds:.0f}s with no trigger; still baking"
            store.record_event(name, "bake.stopped", seconds=result.seconds, looks=result.looks)
            return result
        if rules:
            for _try in range(FINAL_PROBE_TRIES):
                ran, trigger = self.probe(result, started)
                if trigger:
                    return self._fire(result, [trigger], started, time.monotonic() + 60.0)  # tries for a minute
                if ran:
                    break
                self.stop.wait(o.interval)
            else:
                last = result.reconciliations[-1]
                result.outcome, result.exit_code = BakeOutcome.UNRECONCILED, ExitCode(last["exit_code"])
                result.seconds = round(time.monotonic() - started, 1)
                result.message = (f"the bake saw no trigger, but its final reconciliation probe did not run "
                                  f"({last['message']}): not clean, nothing completed")
                store.record_event(name, "bake.unreconciled", seconds=result.seconds, probe=last)
                return result
        store.record_event(name, "bake.clean", seconds=result.seconds, looks=result.looks,
                           reconciliations=len(result.reconciliations))
        result.message = f"clean bake: {result.looks} looks over {result.seconds:.0f}s, no trigger fired"
        if o.complete_after:
            self.say("clean bake: completing")
            result.completed = self.co.complete(name, **o.complete_kw).to_dict()
            result.message += "; completed"
        return result

    def probe(self, result: BakeResult, started: float) -> tuple[bool, Trigger | None]:
        """One reconciliation probe: (whether it ran, the trigger if the checks disagree)."""
        store, name = self.co.store, self.migration
        self.say(f"baking {name}: comparing the reconciliation checks at a consistent point")
        try:
            rb = reconcile_probe(self.co.config, store, name, self.rollback_opts)
        except ReshardError as exc:  # e.g. another process holds the lease: try again later
            rb = SwitchResult(SwitchKind.ROLLBACK, name, f"failed ({type(exc).__name__})", exc.exit_code, message=str(exc))
        summary = {"at_s": round(time.monotonic() - started, 1), "outcome": rb.outcome,
                   "exit_code": int(rb.exit_code), "message": rb.message,
                   "pause_ms": rb.pause_ms if rb.pause_ms is not None else rb.unfenced_after_ms,
                   "reconciliation": rb.reconciliation}
        result.reconciliations.append(summary)
        store.record_event(name, "bake.reconciled", **summary)
        if rb.outcome != Outcome.RECONCILE_FAILED:
            return rb.outcome == Outcome.RECONCILED, None
        differing = [r for r in rb.reconciliation if not r.get("ok")]
        return True, Trigger("reconciliation", f"the reconciliation checks disagree at a consistent point: "
                             f"{rb.message}", {"checks": differing[:10], "pause_ms": rb.pause_ms})

    def _fire(self, result: BakeResult, fired: list[Trigger], started: float, end: float) -> BakeResult:
        result.trigger = fired[0]
        self.co.store.record_event(self.migration, "bake.trigger", trigger=fired[0].name, detail=fired[0].detail,
                                   evidence=fired[0].evidence, also=[t.name for t in fired[1:]])
        self.say(f"bake trigger: {fired[0].detail}; rolling back")
        return self._roll_back(result, started, end)

    def _roll_back(self, result: BakeResult, started: float, end: float) -> BakeResult:
        store, name = self.co.store, self.migration
        # the checks already disagree: the rollback would only back out on them
        opts = replace(self.rollback_opts, reconcile=[]) if result.trigger and \
            result.trigger.name == "reconciliation" else self.rollback_opts
        while True:
            try:
                rb = rollback(self.co.config, store, name, opts)
            except ReshardError as exc:  # e.g. another process holds the lease: try again
                rb = SwitchResult(SwitchKind.ROLLBACK, name, f"failed ({type(exc).__name__})", exc.exit_code, message=str(exc))
            result.rollback = rb.to_dict()
            store.record_event(name, "bake.rolled_back" if rb.outcome == Outcome.DONE else "bake.rollback_failed",
                               outcome=rb.outcome, exit_code=int(rb.exit_code), pause_ms=rb.pause_ms,
                               message=rb.message)
            if rb.outcome == Outcome.DONE:
                result.outcome, result.exit_code = BakeOutcome.ROLLED_BACK, ExitCode.BAKE_ROLLED_BACK
                result.message = (f"rolled back by the bake: {result.trigger.detail if result.trigger else ''}; "
                                  f"write pause {rb.pause_ms:.0f} ms")
                break
            if time.monotonic() >= end or self.stop.is_set():
                result.outcome, result.exit_code = BakeOutcome.ROLLBACK_FAILED, rb.exit_code
                result.message = f"a trigger fired but the rollback did not run: {rb.message}"
                break
            self.say(f"rollback did not run ({rb.message}); trying again")
            self.stop.wait(self.opts.interval)
        result.seconds = round(time.monotonic() - started, 1)
        return result
