"""Cutover and rollback, orchestrated once over the step protocol (cutover/steps.py).

    gates (read-only) -> prepare -> register map        (before the pause)
    fence -> drain position -> drain -> sequences        (the write pause:
    -> flip from-side -> flip to-side -> ACTIVATE          from the fence request
    -> after flip (reverse streams / their teardown)       to the activation)

Every step is recorded in the control database before and after it runs. Inside the
write pause the records are kept back and written in one transaction (each with the
time it happened) at the points that need them on disk: just before the targets' flip
(the point of no return below, recorded before it runs), after the activation, or after
a back-out unfenced the writes. A round trip to the control database per record cost
~70 ms of the pause on a loaded 2-core machine.

THE POINT OF NO RETURN is the start of the to-side's flip (``flip_to``): from that
moment a target may accept writes for the moving keys. Before it, any failure or the
budget running out backs out: every involved cluster enforces the active map again,
routing never moved, no target ever accepted a moving key, the streams keep running.
From it on, the switch only goes forward (flip_to, activate, after_flip), whatever the
budget says and however long this process was frozen, because backing out would
discard writes the targets acknowledged. A rerun after a crash or stall decides the
same way from the control database: an attempt whose flip_to was recorded as started
(it is recorded before it runs) is finished forward, any other is backed out; then it
starts a fresh attempt. At no point do two clusters accept the same key (see
reshard/cluster/fence.py).

What a frozen coordinator can cost: before the sources' flip, nothing beyond the budget
(the fence lapses by itself at its deadline, and the server ends a fence transaction the
process stopped acting in, see fence.HOLD_MS); between the sources' flip and the
activation, the moving keys have no owner that routers write to until the process
resumes (or its lease session ends and a rerun finishes forward) - refused, retried,
never lost or accepted twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import errors as pgerr

from reshard.config import Config
from reshard.control import states
from reshard.control.lease import Lease
from reshard.control.states import State
from reshard.control.store import ControlStore
from reshard.control.switch import StepRecord
from reshard.cutover import gates as g
from reshard.cutover.steps import CutoverSteps, DryRunSteps, LiveSteps, Switch, SwitchKind
from reshard.cutover.waves import next_wave
from reshard.errors import BudgetExceeded, LeaseLost, MigrationError, SwitchIncomplete, Unavailable, WaitTimeout
from reshard.exit_codes import ExitCode
from reshard.failpoints import FAILPOINT_ENV, FAILPOINT_SLEEP_ENV, failpoint  # noqa: F401  (tests name them here)
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.connect_client import ConnectError
from reshard.observe.progress import Progress
from reshard.proof.catchup import applier_group
from reshard.proof.reconcile import ReconciliationFailed
from reshard.retry import retry


class Outcome(StrEnum):
    """How a switch attempt ended (SwitchResult.outcome; ``outcome`` in the --json document)."""

    DONE = "done"
    GATES = "gates_not_met"
    ABORTED = "aborted"
    DRY_RUN = "dry_run"
    RECONCILE_FAILED = "reconciliation_failed"
    RECONCILED = "reconciled"
@dataclass
class SwitchOptions:
    max_lag: int = 1000  # Kafka records not yet applied
    max_lag_bytes: int = 64 << 20  # WAL not yet confirmed by Debezium
    max_write_pause: float = 2.0  # seconds, fence request -> activation
    lock_timeout_ms: int = 500  # how long a fence change may queue behind writes in progress
    sequence_gap: int = 1
    only: str | None = None
    dry_run: bool = False
    require_verified: bool = True
    # the user's reconciliation checks (reshard/proof/reconcile.py); None: the migration's stored ones
    reconcile: list[dict] | None = None
    # run the pause up to the reconciliation checks, then back out on purpose: the sides
    # compared at a consistent point, routing unchanged (a bake's reconciliation probe)
    probe: bool = False


@dataclass
class SwitchResult:
    kind: SwitchKind
    migration: str
    outcome: str  # an Outcome, or "failed (<error>)" when a bake's rollback raised
    exit_code: ExitCode
    wave: int | None = None
    epoch: int | None = None
    keys: str = ""
    pause_ms: float | None = None
    drain_ms: float | None = None
    unfenced_after_ms: float | None = None
    gates: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    reconciliation: list[dict] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict:
        return {**self.__dict__, "exit_code": int(self.exit_code)}


def reconcile_rules(store: ControlStore, migration: str, opts: SwitchOptions) -> list[dict]:
    """The reconciliation checks a switch runs: the options' own, or the migration's stored ones."""
    return opts.reconcile if opts.reconcile is not None else store.migration(migration).settings.get("reconcile", [])


def _margin(budget: float) -> float:
    """Time kept in hand to back out within the budget (restoring the fence on every
    involved cluster took up to 0.2 s on a loaded 2-core machine)."""
    return max(0.25, 0.15 * budget)


# the steps of the pause that act on clusters or routing: each runs only if this process
# still holds the migration's lease (the budget is checked before the flips, see _Attempt.run)
GUARDED = ("drain_position", "drain", "sequences", "flip_from", "flip_to", "activate")
NO_RETURN = "flip_to"  # the point of no return: the step a rerun's recovery looks for (see recover)


class Orchestrator:
    def __init__(self, config: Config, store: ControlStore, progress: Progress | None = None,
                 lease: Lease | None = None):
        self.config = config
        self.store = store
        self.progress = progress or Progress("off")
        self.lease = lease
        self.finished: tuple[dict, int] | None = None  # an interrupted attempt recover() completed

    # ---- what moves ---------------------------------------------------------------------
    def cutover_switch(self, migration: str, only: str | None) -> Switch:
        rec = self.store.migration(migration)
        if rec.state == State.BAKING:
            raise MigrationError(f"migration {migration} is already cut over and baking "
                                 "(`reshard complete` or `reshard rollback`)")
        if rec.state not in states.SWITCHABLE:
            raise MigrationError(f"migration {migration} is {rec.state}; cutover needs it streaming (copy done)")
        active_epoch, active_map = self.store.require_active()
        final = self.store.get_map(rec.to_epoch)
        wave = next_wave(active_map, final, only)
        number = 1 + sum(1 for w in self.store.waves(migration) if w["state"] == "cut")
        return Switch(SwitchKind.CUTOVER, migration, active_epoch, active_map, wave.map, number, wave.buckets, wave.last)

    def rollback_switch(self, migration: str) -> Switch:
        rec = self.store.migration(migration)
        if not any(w["state"] == "cut" for w in self.store.waves(migration)):
            raise MigrationError(f"migration {migration} has no wave cut over: nothing to roll back")
        if rec.state not in (State.STREAMING, State.SHADOWING, State.VALIDATING, State.BAKING):
            raise MigrationError(f"migration {migration} is {rec.state}; rollback is possible until `complete`")
        active_epoch, active_map = self.store.require_active()
        generations = {r["cluster"]: r["generation"] for r in self.store.reverse_streams(migration)}
        return Switch(SwitchKind.ROLLBACK, migration, active_epoch, active_map, self.store.get_map(rec.from_epoch),
                      generations=generations)

    # ---- gates -----------------------------------------------------------------------------
    def gates(self, sw: Switch, opts: SwitchOptions) -> list[g.Gate]:
        with KafkaAdmin(self.config.kafka) as admin:
            records = admin.lag(applier_group(sw.migration), sw.drain_topics())
        out = [g.lineage_gate(self.config, self.store, sw.migration, sw.drain_streams),
               g.lag_gate(records, opts.max_lag, g.stream_wal_lag(self.config, sw.drain_streams), opts.max_lag_bytes)]
        if sw.kind == SwitchKind.CUTOVER:
            if opts.require_verified:
                out.append(g.verification_gate(self.store, sw.migration))
            existing = {r["cluster"] for r in self.store.reverse_streams(sw.migration)}
            out.append(g.reverse_gate(self.config, sw.to_side, existing))
        else:
            have = {r["cluster"] for r in self.store.reverse_streams(sw.migration)}
            missing = [c for c in sw.from_side if c not in have]
            out.append(g.Gate("reverse", not missing, sorted(have), sw.from_side,
                              f"no reverse stream on {', '.join(missing)}" if missing else "reverse streams running",
                              ExitCode.GATE_REVERSE))
        out.append(g.applier_gate(self.store, sw.migration))
        return out

    # ---- recovery ----------------------------------------------------------------------------
    def recover(self, migration: str) -> list[str]:
        """Settle attempts a crash (or a stall) left running: finish them forward if they
        passed the point of no return (the targets' flip had started), back them out if
        not. Returns one sentence per attempt settled.

        Called with the migration's lease held: every live attempt holds that lease for
        its whole run, so an attempt still marked running now belongs to a holder that is
        gone (or that lost the lease and stops at its next step without acting)."""
        said = []
        for a in self.store.running_attempts(migration):
            if a["kind"] not in (SwitchKind.CUTOVER, SwitchKind.ROLLBACK):
                continue
            plan = a["plan"]
            sw = Switch(a["kind"], migration, plan["active_epoch"], self.store.get_map(plan["active_epoch"]),
                        self.store.get_map(plan["epoch"]), a["wave"], plan.get("buckets"), plan.get("last", True),
                        {r["cluster"]: r["generation"] for r in self.store.reverse_streams(migration)})
            steps = LiveSteps(self.config, self.store, sw)
            recorded = self.store.steps(migration, a["attempt"])
            try:
                if self.store.active_epoch() == plan["epoch"] or NO_RETURN in recorded:
                    # past the point of no return: a target may have accepted writes, so the
                    # only safe way is forward (the flips are idempotent)
                    steps.flip_to(plan["epoch"])
                    if self.store.active_epoch() != plan["epoch"]:
                        fence_at = recorded["fence"]["started_at"] if "fence" in recorded else None
                        pause_ms = self.store.ms_since(fence_at) if fence_at is not None else None
                        steps.activate(plan["epoch"], pause_ms, (recorded.get("drain") or {}).get(
                            "detail", {}).get("ms") or 0)
                    steps.after_flip()
                    self.store.finish_attempt(migration, a["attempt"], "done", {"recovered": "finished"})
                    said.append(f"{a['kind']} attempt {a['attempt']} had passed the point of no return (the "
                                f"targets' flip): finished it forward, epoch {plan['epoch']} active")
                    self.finished = (a, plan["epoch"])
                else:
                    steps.back_out()
                    self.store.finish_attempt(migration, a["attempt"], "backed_out", {"recovered": "backed out"})
                    with contextlib.suppress(Exception):  # an echo more is harmless: never fail on it
                        steps.quiet_reverse()
                    said.append(f"{a['kind']} attempt {a['attempt']} had not reached the targets' flip of epoch "
                                f"{plan['epoch']}: backed it out (epoch {plan['active_epoch']} enforced everywhere "
                                "again)")
            finally:
                steps.close()
            self._settle(migration, f"recovered the interrupted {a['kind']} attempt {a['attempt']}")
        return said

    def _settle(self, migration: str, why: str) -> None:
        """Out of switching, to where the migration now rests (baking, streaming, rolled back)."""
        self.store.set_state(migration, self.store.settled_state(migration), why=why,
                             only_from=(State.SWITCHING,))

    # ---- the run --------------------------------------------------------------------------------
    def run(self, sw: Switch, opts: SwitchOptions, *, check_gates: bool = True) -> SwitchResult:
        result = SwitchResult(sw.kind, sw.migration, Outcome.DONE, ExitCode.OK, sw.wave,
                              keys="; ".join(f"{m.source}->{m.target}: {m.summary}" for m in sw.plan.moves))
        if check_gates:
            gates = self.gates(sw, opts)
            result.gates = [x.to_dict() for x in gates]
            failed = [x for x in gates if not x.ok]
            if failed and not opts.dry_run:
                result.outcome, result.exit_code = Outcome.GATES, failed[0].code
                result.message = "; ".join(f"{x.name}: {x.detail}" for x in failed)
                self.store.record_event(sw.migration, "gates.failed", kind=sw.kind, gates=result.gates)
                return result
        steps = DryRunSteps(self.config, self.store, sw) if opts.dry_run else LiveSteps(
            self.config, self.store, sw, lock_timeout_ms=opts.lock_timeout_ms, sequence_gap=opts.sequence_gap)
        attempt = _Attempt(self, sw, opts, steps, result)
        try:
            return attempt.run()
        finally:
            steps.close()
            if attempt.number is not None and not attempt.left_to_recovery:
                with contextlib.suppress(Exception):  # a rerun's recovery settles it otherwise
                    self._settle(sw.migration, f"{sw.kind} attempt {attempt.number}: "
                                               f"{result.outcome.replace('_', ' ')}")


# what makes the pause back out (before the point of no return) with exit 12: the budget,
# a bounded wait, a lock, or a cluster connection lost (also the server ending a frozen
# session: idle_in_transaction_session_timeout)
BACK_OUT_ON = (BudgetExceeded, WaitTimeout, pgerr.DeadlockDetected, pgerr.LockNotAvailable, psycopg.OperationalError,
               pgerr.IdleInTransactionSessionTimeout, Unavailable)
# past the point of no return a step is retried on these (a target briefly unreachable, a
# session the server ended while this process was frozen, Connect rebalancing) for this long, then the command
# exits 15 and a rerun finishes it
FORWARD_RETRY_ON = (psycopg.Error, Unavailable, WaitTimeout, ConnectError)
FORWARD_RETRY_S = 30.0


class _Attempt:
    """One attempt of a switch: the steps in order, each recorded, with two policies.

    Before the point of no return a failure (or the budget running out) backs out:
    every involved cluster enforces the active map again and no target ever accepted a
    write. THE POINT OF NO RETURN is the start of the targets' flip (``flip_to``): from
    then on a target may accept writes for the moving keys, so backing out would discard
    acknowledged writes. Past it the attempt only goes forward (flip_to, activate,
    after_flip), whatever the budget says, retrying what fails; if it cannot, the attempt
    stays running and a rerun's recovery finishes it forward."""

    def __init__(self, orch: Orchestrator, sw: Switch, opts: SwitchOptions, steps: CutoverSteps,
                 result: SwitchResult):
        self.orch, self.store, self.sw, self.opts, self.steps, self.result = orch, orch.store, sw, opts, steps, result
        self.number: int | None = None  # the attempt's number in the control database (None: dry run)
        self.t0 = time.monotonic()
        self.deadline = float("inf")  # monotonic: fence request + budget
        self.held: list[StepRecord] | None = None  # the pause's step records, not yet written (None: write each)
        self.left_to_recovery = False  # past the point of no return and not finished, or the lease was lost

    # ---- recording ---------------------------------------------------------------------------
    def guard(self, name: str) -> None:
        """A process that stalled (GC, a paused VM, a lost network) must not act late:
        after the fence, every step re-checks the lease first."""
        if not self.opts.dry_run and name in GUARDED and self.orch.lease is not None:
            self.orch.lease.check()

    def record(self, name: str, status: str, **detail: Any) -> None:
        """A step's record: written now, or kept back while the pause holds records."""
        if self.number is None:
            return
        rec = StepRecord(name, status, detail, time.monotonic())
        if self.held is not None:
            self.held.append(rec)
        else:
            self.store.record_steps(self.sw.migration, self.number, [rec])

    def write_held(self, *, hold_on: bool = False) -> None:
        """Write the records kept back, in one transaction; ``hold_on``: keep holding after."""
        held, self.held = self.held, ([] if hold_on else None)
        if held and self.number is not None:
            self.store.record_steps(self.sw.migration, self.number, held)

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        failpoint(name, "before")
        self.guard(name)
        self.record(name, "started")
        if name == NO_RETURN and self.held is not None:
            self.write_held(hold_on=True)  # on disk before the point of no return is passed
        t = time.monotonic()
        try:
            out = fn(*args)
        except Exception as exc:
            with contextlib.suppress(Exception):  # inside the pause: written after the back-out unfenced
                self.record(name, "failed", error=str(exc))
            raise
        ms = round((time.monotonic() - t) * 1000, 1)
        detail = out if isinstance(out, dict) and all(isinstance(k, str) for k in out) else {}
        self.record(name, "done", ms=ms, **detail)
        self.result.steps.append({"step": name, "ms": ms})
        failpoint(name, "after")
        return out

    def finish(self, state: str, detail: dict) -> None:
        if self.number is not None:
            self.store.finish_attempt(self.sw.migration, self.number, state, detail)

    # ---- before the point of no return: back out -----------------------------------------------
    def back_out(self) -> None:
        """Restore the fences (the from-side first: its writes are the paused ones), then
        record the failed step and the back-out: in the write pause, the control database's
        round trips wait until the writes flow again. ``unfenced_after_ms`` is when the
        from-side accepted writes again, not when a slow or frozen to-side answered."""
        t = time.monotonic()
        out = self.steps.back_out()
        unfenced = self.steps.unfenced_at or time.monotonic()
        self.result.unfenced_after_ms = round((unfenced - self.t0) * 1000, 1)
        ms = round((time.monotonic() - t) * 1000, 1)
        self.record("back_out", "done", ms=ms, **out)
        self.write_held()
        self.result.steps.append({"step": "back_out", "ms": ms})

    def backed_out(self, outcome: Outcome, code: ExitCode, message: str, detail: dict) -> SwitchResult:
        """The end of an attempt that backed out: recorded, reverse streams quieted, reported."""
        self.finish("aborted", detail)
        with contextlib.suppress(Exception):  # an echo more is harmless: never fail on it
            self.step("quiet_reverse", self.steps.quiet_reverse)
        self.result.outcome, self.result.exit_code = outcome, code
        self.result.message = (f"{message}; writes were accepted again where they were after "
                               f"{self.result.unfenced_after_ms:.0f} ms; routing unchanged")
        return self.result

    # ---- the attempt ---------------------------------------------------------------------------
    def run(self) -> SwitchResult:
        sw, opts, steps, result = self.sw, self.opts, self.steps, self.result
        rules = reconcile_rules(self.store, sw.migration, opts)
        self.orch.progress.step(f"{sw.kind} of {sw.migration}: preparing ({result.keys})")
        self.step("prepare", steps.prepare)
        epoch = self.step("register_map", steps.register_map)
        result.epoch = epoch
        if not opts.dry_run:
            self.number = self.store.begin_attempt(sw.migration, sw.kind, sw.wave, {
                "epoch": epoch, "active_epoch": sw.active_epoch, "buckets": sw.wave_buckets,
                "last": sw.last_wave, "budget_s": opts.max_write_pause})
            self.store.set_state(sw.migration, State.SWITCHING, why=f"{sw.kind} attempt {self.number}"
                                 + (" (a reconciliation probe)" if opts.probe else ""), wave=sw.wave, epoch=epoch)
        budget = opts.max_write_pause
        self.orch.progress.step(f"{'dry run: would fence' if opts.dry_run else 'fencing'} writes to the moving keys "
                                f"on {', '.join(sw.from_side)} (budget {budget:.2f}s)")
        failpoint("fence", "before")  # fires here, not in step(): the budget starts at the fence request
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.held = []  # the pause's records, written at the flip, the activation or the back-out
        try:
            return self.pause(epoch, budget, rules)
        finally:
            with contextlib.suppress(Exception):  # what an error or a lost lease left held, at the latest
                self.write_held()

    def pause(self, epoch: int, budget: float, rules: list[dict]) -> SwitchResult:
        """From the fence to the activation (and what follows it)."""
        opts, steps, result = self.opts, self.steps, self.result
        try:
            deadlines = self.step("fence", steps.fence_from, budget)
            positions = self.step("drain_position", steps.drain_position)
            t_drain = time.monotonic()
            self.step("drain", steps.drain, positions, self.deadline - _margin(budget))
            result.drain_ms = round((time.monotonic() - t_drain) * 1000, 1)
            self.step("sequences", steps.sync_sequences)
            if rules:
                checked = self.step("reconcile", steps.reconcile, rules, self.deadline - _margin(budget))
                result.reconciliation = [r.to_dict() for r in checked]
            if opts.probe:
                self.back_out()
                self.finish("backed_out", {"reason": "reconciliation probe", "reconciliation": result.reconciliation})
                result.outcome = Outcome.RECONCILED
                result.pause_ms = result.unfenced_after_ms
                result.message = (f"the reconciliation checks agree at a consistent point; writes were accepted "
                                  f"again after {result.unfenced_after_ms:.0f} ms; routing unchanged")
                return result
            if not opts.dry_run and time.monotonic() > self.deadline - _margin(budget):
                raise BudgetExceeded(f"{budget:.2f}s write-pause budget nearly spent before the flip")
            self.step("flip_from", steps.flip_from, epoch, deadlines)
            failpoint("flip_to", "before")  # fires here, not in step(): a stall here is before the point of no return
            if not opts.dry_run and time.monotonic() > self.deadline:
                raise BudgetExceeded(f"{budget:.2f}s write-pause budget spent before the targets' flip")
        except BACK_OUT_ON as exc:
            self.back_out()
            return self.backed_out(Outcome.ABORTED, ExitCode.CUTOVER_ABORTED, f"aborted: {exc}", {"reason": str(exc)})
        except ReconciliationFailed as exc:
            # the user's checks disagree at the consistent point: nothing flipped, back out
            self.back_out()
            result.reconciliation = [r.to_dict() for r in exc.results]
            return self.backed_out(Outcome.RECONCILE_FAILED, ExitCode.RECONCILE_FAILED, str(exc),
                                   {"reason": str(exc), "reconciliation": result.reconciliation})
        except LeaseLost:
            # another process holds the migration now and settles this attempt: touch nothing
            self.left_to_recovery = True
            raise
        except BaseException as exc:
            # an unforeseen failure before the point of no return: back out, then report it
            with contextlib.suppress(Exception):
                self.back_out()
            with contextlib.suppress(Exception):
                self.finish("aborted", {"reason": str(exc)})
            with contextlib.suppress(Exception):
                self.step("quiet_reverse", steps.quiet_reverse)
            result.outcome = f"failed ({type(exc).__name__}), backed out"
            raise
        return self.forward(epoch)

    # ---- past the point of no return: only forward -----------------------------------------------
    def forward(self, epoch: int) -> SwitchResult:
        """The targets' flip, the activation and what follows, never backed out."""
        sw, opts, steps, result = self.sw, self.opts, self.steps, self.result
        self.left_to_recovery = not opts.dry_run  # until it is finished, a rerun's recovery finishes it
        self.persist("flip_to", steps.flip_to, epoch)
        def activate() -> dict:
            result.pause_ms = round((time.monotonic() - self.t0) * 1000, 1)  # fence request -> activation
            return steps.activate(epoch, result.pause_ms, result.drain_ms or 0)

        self.persist("activate", activate)
        self.write_held()  # the pause is over
        assert result.pause_ms is not None
        if not opts.dry_run and sw.kind == SwitchKind.CUTOVER:
            self.store.set_wave_pause(sw.migration, sw.wave or 1, result.pause_ms)
        self.persist("after_flip", steps.after_flip)
        self.finish("done", {"pause_ms": result.pause_ms, "drain_ms": result.drain_ms, "epoch": epoch,
                             "reconciliation": result.reconciliation})
        self.left_to_recovery = False
        if opts.dry_run:
            assert isinstance(steps, DryRunSteps)
            result.outcome, result.plan = Outcome.DRY_RUN, list(steps.sentences)
            result.pause_ms = result.drain_ms = None
            return result
        over = result.pause_ms > opts.max_write_pause * 1000
        result.message = (f"{sw.kind} done: epoch {epoch} active; write pause {result.pause_ms:.0f} ms "
                          f"(drain {result.drain_ms:.0f} ms)"
                          + (f", over the {opts.max_write_pause:.2f}s budget: this process was held up past the "
                             "point of no return, where a switch only goes forward" if over else ""))
        return result

    def persist(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """A step past the point of no return: retried on what can pass (a cluster briefly
        unreachable, a session the server ended while this process was frozen) for
        FORWARD_RETRY_S, then SwitchIncomplete (exit 15) with the attempt left running."""
        tries = 0

        def once() -> Any:
            nonlocal tries
            tries += 1
            return self.step(name, fn, *args)
        try:
            return retry(once, on=() if self.opts.dry_run else FORWARD_RETRY_ON, for_s=FORWARD_RETRY_S,
                         delay=0.2, backoff=2, max_delay=2.0)
        except FORWARD_RETRY_ON as exc:
            raise SwitchIncomplete(
                f"{self.sw.kind} of {self.sw.migration} passed its point of no return (the targets' flip) "
                f"but {name} failed for {FORWARD_RETRY_S:.0f}s ({tries} tries): {exc}. The moving keys are "
                f"refused until `reshard {self.sw.kind} {self.sw.migration}` is run again, which finishes "
                "it forward; nothing acknowledged is lost") from exc


def _finished(orch: Orchestrator, kind: SwitchKind, migration: str, recovered: list[str]) -> SwitchResult | None:
    """The rerun after a crash past the point of no return: recovery finished the attempt,
    and that is this command's result (it does not go on to another switch)."""
    if orch.finished is None or orch.finished[0]["kind"] != kind:
        return None
    attempt, epoch = orch.finished
    return SwitchResult(kind, migration, Outcome.DONE, ExitCode.OK, attempt["wave"], epoch, recovered=recovered,
                        message=f"finished the interrupted {kind} (attempt {attempt['attempt']}): epoch {epoch} active")


@contextlib.contextmanager
def _lease(pinned: ControlStore, migration: str, kind: SwitchKind, opts: SwitchOptions):
    """The migration's lease on the pinned session (a dry run writes nothing and needs none).
    Held, it makes ``recover`` safe: a running attempt found now has lost its holder."""
    if opts.dry_run:
        yield None
        return
    with pinned.lease(migration, kind) as lease:
        yield lease


def cutover(config: Config, store: ControlStore, migration: str, opts: SwitchOptions,
            progress: Progress | None = None) -> SwitchResult:
    """Recover any interrupted attempt, then cut over the next wave (all of it by default)."""
    with store.pinned() as pinned, _lease(pinned, migration, SwitchKind.CUTOVER, opts) as lease:
        orch = Orchestrator(config, pinned, progress, lease)
        recovered = [] if opts.dry_run else orch.recover(migration)
        done = _finished(orch, SwitchKind.CUTOVER, migration, recovered)
        if done is not None:
            return done
        result = orch.run(orch.cutover_switch(migration, opts.only), opts)
        result.recovered = recovered
        return result


def reconcile_probe(config: Config, store: ControlStore, migration: str, opts: SwitchOptions) -> SwitchResult:
    """While baking: the rollback's pause (targets fenced, reverse streams drained) up to the
    migration's reconciliation checks, then backed out: the sides compared at a consistent
    point without moving anything. Outcome.RECONCILED, Outcome.RECONCILE_FAILED (nothing moved either),
    or why it could not run (gates, budget)."""
    rules = reconcile_rules(store, migration, opts)
    if not rules:
        raise MigrationError(f"migration {migration} has no reconciliation checks to probe")
    with store.pinned() as pinned, _lease(pinned, migration, SwitchKind.ROLLBACK, opts) as lease:
        orch = Orchestrator(config, pinned, None, lease)
        orch.recover(migration)  # an attempt a crash left running is settled first, as a rollback would
        return orch.run(orch.rollback_switch(migration), replace(opts, probe=True, reconcile=rules))


def rollback(config: Config, store: ControlStore, migration: str, opts: SwitchOptions,
             progress: Progress | None = None) -> SwitchResult:
    """Recover any interrupted attempt, then move every cut-over key back to its source."""
    with store.pinned() as pinned, _lease(pinned, migration, SwitchKind.ROLLBACK, opts) as lease:
        orch = Orchestrator(config, pinned, progress, lease)
        recovered = [] if opts.dry_run else orch.recover(migration)
        done = _finished(orch, SwitchKind.ROLLBACK, migration, recovered)
        if done is not None:
            return done
        pinned.migration(migration)  # an unknown name is an error, not "nothing to roll back"
        if not any(w["state"] == "cut" for w in pinned.waves(migration)):
            return SwitchResult(SwitchKind.ROLLBACK, migration, Outcome.DONE, ExitCode.OK, recovered=recovered,
                                message="nothing is cut over: the sources own every key")
        result = orch.run(orch.rollback_switch(migration), opts)
        result.recovered = recovered
        return result

