"""Cutover and rollback, orchestrated once over the step protocol (cutover/steps.py).

    gates (read-only) -> prepare -> register map        (before the pause)
    fence -> drain position -> drain -> sequences        (the write pause:
    -> flip from-side -> flip to-side -> ACTIVATE          from the fence request
    -> after flip (reverse streams / their teardown)       to the activation)

Every step is recorded in the control database before and after it runs. The point
of no return is ``activate``: one control transaction moves routing to the new epoch
(and records the wave). Before it, any failure or the budget running out backs out:
every involved cluster enforces the active map again, routing never moved, the streams
keep running. A rerun after a crash looks at the ground truth, whether the attempt's
epoch is active: if so it finishes the leftover steps, if not it backs out; then it
starts a fresh attempt. At no point do two clusters accept the same key (see
reshard/fence.py), and the fence lapses by itself at the budget's deadline even if
this process dies.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg import errors as pgerr
from reshard.cdc_applier.offsets import applier_group
from reshard.cutover import gates as g
from reshard.cutover.steps import CUTOVER, ROLLBACK, DryRunSteps, LiveSteps, Switch
from reshard.cutover.waves import next_wave

from reshard.config import Config
from reshard.control import states
from reshard.control.store import ControlStore, Lease
from reshard.errors import BudgetExceeded, LeaseLost, MigrationError, WaitTimeout
from reshard.exit_codes import ExitCode
from reshard.kafka_admin import KafkaAdmin
from reshard.progress import Progress
from reshard.reconcile import ReconciliationFailed

DONE, GATES, ABORTED, DRY_RUN = "done", "gates_not_met", "aborted", "dry_run"
RECONCILE_FAILED = "reconciliation_failed"
RECONCILED = "reconciled"  # a probe: the pause ran to the reconciliation checks, which agreed, and backed out
FAILPOINT_ENV = "RESHARD_FAILPOINT"  # "<step>:before" or "<step>:after": stop there (crash tests)


FAILPOINT_SLEEP_ENV = "RESHARD_FAILPOINT_SLEEP"  # seconds to stall there (default 120: wait to be killed)


def failpoint(step: str, when: str) -> None:
    """Failure injection for tests: announce the point on stderr and stall there (to be
    killed, or to wake up late like a paused VM).

    Only active when RESHARD_FAILPOINT names this step; never set in production."""
    if os.environ.get(FAILPOINT_ENV) == f"{step}:{when}":
        print(f"reshard: failpoint {step}:{when} reached", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get(FAILPOINT_SLEEP_ENV, "120")))


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
    # the user's reconciliation checks (reshard/reconcile.py); None: the migration's stored ones
    reconcile: list[dict] | None = None
    # run the pause up to the reconciliation checks, then back out on purpose: the sides
    # compared at a consistent point, routing unchanged (a bake's reconciliation probe)
    probe: bool = False


@dataclass
class SwitchResult:
    kind: str
    migration: str
    outcome: str
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
# still holds the migration's lease and the write-pause budget is not spent
GUARDED = ("drain_position", "drain", "sequences", "flip_from", "flip_to", "activate")


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
        if rec.state == states.BAKING:
            raise MigrationError(f"migration {migration} is already cut over and baking "
                                 "(`reshard complete` or `reshard rollback`)")
        if rec.state not in states.SWITCHABLE:
            raise MigrationError(f"migration {migration} is {rec.state}; cutover needs it streaming (copy done)")
        active_epoch, active_map = self.store.require_active()
        final = self.store.get_map(rec.to_epoch)
        wave = next_wave(active_map, final, only)
        number = 1 + sum(1 for w in self.store.waves(migration) if w["state"] == "cut")
        return Switch(CUTOVER, migration, active_epoch, active_map, wave.map, number, wave.buckets, wave.last)

    def rollback_switch(self, migration: str) -> Switch:
        rec = self.store.migration(migration)
        if not any(w["state"] == "cut" for w in self.store.waves(migration)):
            raise MigrationError(f"migration {migration} has no wave cut over: nothing to roll back")
        if rec.state not in (states.STREAMING, states.SHADOWING, states.VALIDATING, states.BAKING):
            raise MigrationError(f"migration {migration} is {rec.state}; rollback is possible until `complete`")
        active_epoch, active_map = self.store.require_active()
        generations = {r["cluster"]: r["generation"] for r in self.store.reverse_streams(migration)}
        return Switch(ROLLBACK, migration, active_epoch, active_map, self.store.get_map(rec.from_epoch),
                      generations=generations)

    # ---- gates -----------------------------------------------------------------------------
    def gates(self, sw: Switch, opts: SwitchOptions) -> list[g.Gate]:
        with KafkaAdmin(self.config.kafka) as admin:
            records = admin.lag(applier_group(sw.migration), sw.drain_topics())
        out = [g.lag_gate(records, opts.max_lag, g.stream_wal_lag(self.config, sw.drain_streams), opts.max_lag_bytes)]
        if sw.kind == CUTOVER:
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
        """Settle attempts a crash left running: finish them if they passed the point of
        no return, back them out if not. Returns one sentence per attempt settled.

        Called with the migration's lease held: every live attempt holds that lease for
        its whole run, so an attempt still marked running now belongs to a holder that is
        gone (or that lost the lease and stops at its next step without acting)."""
        said = []
        for a in self.store.running_attempts(migration):
            if a["kind"] not in (CUTOVER, ROLLBACK):
                continue
            plan = a["plan"]
            sw = Switch(a["kind"], migration, plan["active_epoch"], self.store.get_map(plan["active_epoch"]),
                        self.store.get_map(plan["epoch"]), a["wave"], plan.get("buckets"), plan.get("last", True),
                        {r["cluster"]: r["generation"] for r in self.store.reverse_streams(migration)})
            steps = LiveSteps(self.config, self.store, sw)
            try:
                if self.store.active_epoch() == plan["epoch"]:
                    steps.flip_to(plan["epoch"])  # idempotent: the flips preceded the activation
                    steps.after_flip()
                    self.store.finish_attempt(migration, a["attempt"], "done", {"recovered": "finished"})
                    said.append(f"{a['kind']} attempt {a['attempt']} had passed the point of no return: finished it")
                    self.finished = (a, plan["epoch"])
                else:
                    steps.back_out()
                    self.store.finish_attempt(migration, a["attempt"], "backed_out", {"recovered": "backed out"})
                    with contextlib.suppress(Exception):  # an echo more is harmless: never fail on it
                        steps.quiet_reverse()
                    said.append(f"{a['kind']} attempt {a['attempt']} had not activated epoch {plan['epoch']}: "
                                f"backed it out (epoch {plan['active_epoch']} enforced everywhere again)")
            finally:
                steps.close()
            self._settle(migration, f"recovered the interrupted {a['kind']} attempt {a['attempt']}")
        return said

    def _settle(self, migration: str, why: str) -> None:
        """Out of switching, to where the migration now rests (baking, streaming, rolled back)."""
        self.store.set_state(migration, self.store.settled_state(migration), why=why,
                             only_from=(states.SWITCHING,))

    # ---- the run --------------------------------------------------------------------------------
    def run(self, sw: Switch, opts: SwitchOptions, *, check_gates: bool = True) -> SwitchResult:
        result = SwitchResult(sw.kind, sw.migration, DONE, ExitCode.OK, sw.wave,
                              keys="; ".join(f"{m.source}->{m.target}: {m.summary}" for m in sw.plan.moves))
        if check_gates:
            gates = self.gates(sw, opts)
            result.gates = [x.to_dict() for x in gates]
            failed = [x for x in gates if not x.ok]
            if failed and not opts.dry_run:
                result.outcome, result.exit_code = GATES, failed[0].code
                result.message = "; ".join(f"{x.name}: {x.detail}" for x in failed)
                self.store.record_event(sw.migration, "gates.failed", kind=sw.kind, gates=result.gates)
                return result
        rules = reconcile_rules(self.store, sw.migration, opts)
        steps = DryRunSteps(self.config, self.store, sw) if opts.dry_run else LiveSteps(
            self.config, self.store, sw, lock_timeout_ms=opts.lock_timeout_ms, sequence_gap=opts.sequence_gap)
        attempt: int | None = None
        deadline = float("inf")
        lease_lost = False
        failure: list[tuple[str, str]] = []  # a failed step inside the pause, recorded after the back-out

        def guard(name: str) -> None:
            """A process that stalled (GC, a paused VM, a lost network) must not act late:
            after the fence, every step re-checks the lease and the budget first."""
            if opts.dry_run or name not in GUARDED:
                return
            if self.lease is not None:
                self.lease.check()
            if name in ("flip_to", "activate") and time.monotonic() > deadline:
                raise BudgetExceeded(f"{opts.max_write_pause:.2f}s write-pause budget spent before {name}")

        def step(name: str, fn: Callable[..., Any], *args: Any) -> Any:
            failpoint(name, "before")
            guard(name)
            if attempt is not None:
                self.store.step(sw.migration, attempt, name, "started")
            t = time.monotonic()
            try:
                out = fn(*args)
            except Exception as exc:
                if attempt is not None and deadline != float("inf"):
                    failure.append((name, str(exc)))  # unfence first: recorded by back_out()
                elif attempt is not None:
                    self.store.step(sw.migration, attempt, name, "failed", error=str(exc))
                raise
            ms = round((time.monotonic() - t) * 1000, 1)
            detail = out if isinstance(out, dict) and all(isinstance(k, str) for k in out) else {}
            if attempt is not None:
                self.store.step(sw.migration, attempt, name, "done", ms=ms, **detail)
            result.steps.append({"step": name, "ms": ms})
            failpoint(name, "after")
            return out

        def back_out() -> None:
            """Restore the fences first, then record the failed step and the back-out: in the
            write pause, the control database's round trips wait until the writes flow again."""
            t = time.monotonic()
            out = steps.back_out()
            result.unfenced_after_ms = round((time.monotonic() - t0) * 1000, 1)
            if attempt is not None:
                for name, error in failure:
                    self.store.step(sw.migration, attempt, name, "failed", error=error)
                self.store.step(sw.migration, attempt, "back_out", "done",
                                ms=round((time.monotonic() - t) * 1000, 1), **out)
            result.steps.append({"step": "back_out", "ms": round((time.monotonic() - t) * 1000, 1)})

        t0 = time.monotonic()
        try:
            self.progress.step(f"{sw.kind} of {sw.migration}: preparing ({result.keys})")
            step("prepare", steps.prepare)
            epoch = step("register_map", steps.register_map)
            result.epoch = epoch
            if not opts.dry_run:
                attempt = self.store.begin_attempt(sw.migration, sw.kind, sw.wave, {
                    "epoch": epoch, "active_epoch": sw.active_epoch, "buckets": sw.wave_buckets,
                    "last": sw.last_wave, "budget_s": opts.max_write_pause})
                self.store.set_state(sw.migration, states.SWITCHING, why=f"{sw.kind} attempt {attempt}"
                                     + (" (a reconciliation probe)" if opts.probe else ""),
                                     wave=sw.wave, epoch=epoch)
            budget = opts.max_write_pause
            self.progress.step(f"{'dry run: would fence' if opts.dry_run else 'fencing'} writes to the moving keys "
                               f"on {', '.join(sw.from_side)} "
                               f"(budget {budget:.2f}s)")
            t0 = time.monotonic()
            deadline = t0 + budget
            try:
                deadlines = step("fence", steps.fence_from, budget)
                positions = step("drain_position", steps.drain_position)
                t_drain = time.monotonic()
                step("drain", steps.drain, positions, deadline - _margin(budget))
                result.drain_ms = round((time.monotonic() - t_drain) * 1000, 1)
                step("sequences", steps.sync_sequences)
                if rules:
                    checked = step("reconcile", steps.reconcile, rules, deadline - _margin(budget))
                    result.reconciliation = [r.to_dict() for r in checked]
                if opts.probe:
                    back_out()
                    if attempt is not None:
                        self.store.finish_attempt(sw.migration, attempt, "backed_out",
                                                  {"reason": "reconciliation probe",
                                                   "reconciliation": result.reconciliation})
                    result.outcome = RECONCILED
                    result.pause_ms = result.unfenced_after_ms
                    result.message = (f"the reconciliation checks agree at a consistent point; writes were accepted "
                                      f"again after {result.unfenced_after_ms:.0f} ms; routing unchanged")
                    return result
                if not opts.dry_run and time.monotonic() > deadline - _margin(budget):
                    raise BudgetExceeded(f"{budget:.2f}s write-pause budget nearly spent before the flip")
                step("flip_from", steps.flip_from, epoch, deadlines)
                step("flip_to", steps.flip_to, epoch)
            except (BudgetExceeded, WaitTimeout, pgerr.DeadlockDetected, pgerr.LockNotAvailable) as exc:
                back_out()
                if attempt is not None:
                    self.store.finish_attempt(sw.migration, attempt, "aborted", {"reason": str(exc)})
                with contextlib.suppress(Exception):  # an echo more is harmless: never fail on it
                    step("quiet_reverse", steps.quiet_reverse)
                result.outcome, result.exit_code = ABORTED, ExitCode.CUTOVER_ABORTED
                result.message = (f"aborted: {exc}; writes were accepted again where they were after "
                                  f"{result.unfenced_after_ms:.0f} ms; routing unchanged")
                return result
            except ReconciliationFailed as exc:
                # the user's checks disagree at the consistent point: nothing flipped, back out
                back_out()
                result.reconciliation = [r.to_dict() for r in exc.results]
                if attempt is not None:
                    self.store.finish_attempt(sw.migration, attempt, "aborted",
                                              {"reason": str(exc), "reconciliation": result.reconciliation})
                with contextlib.suppress(Exception):
                    step("quiet_reverse", steps.quiet_reverse)
                result.outcome, result.exit_code = RECONCILE_FAILED, ExitCode.RECONCILE_FAILED
                result.message = (f"{exc}; writes were accepted again where they were after "
                                  f"{result.unfenced_after_ms:.0f} ms; routing unchanged")
                return result
            except LeaseLost:
                # another process holds the migration now and settles this attempt: touch nothing
                lease_lost = True
                raise
            except BaseException as exc:
                # an unforeseen failure before the point of no return: back out, then report it
                with contextlib.suppress(Exception):
                    back_out()
                with contextlib.suppress(Exception):
                    if attempt is not None:
                        self.store.finish_attempt(sw.migration, attempt, "aborted", {"reason": str(exc)})
                with contextlib.suppress(Exception):
                    step("quiet_reverse", steps.quiet_reverse)
                result.outcome = f"failed ({type(exc).__name__}), backed out"
                raise
            step("activate", steps.activate, epoch, round((time.monotonic() - t0) * 1000, 1), result.drain_ms or 0)
            result.pause_ms = round((time.monotonic() - t0) * 1000, 1)
            if not opts.dry_run and sw.kind == CUTOVER:
                self.store.set_wave_pause(sw.migration, sw.wave or 1, result.pause_ms)
            step("after_flip", steps.after_flip)
            if attempt is not None:
                self.store.finish_attempt(sw.migration, attempt, "done",
                                          {"pause_ms": result.pause_ms, "drain_ms": result.drain_ms, "epoch": epoch,
                                           "reconciliation": result.reconciliation})
            if opts.dry_run:
                assert isinstance(steps, DryRunSteps)
                result.outcome, result.plan = DRY_RUN, list(steps.sentences)
                result.pause_ms = result.drain_ms = None
            else:
                result.message = (f"{sw.kind} done: epoch {epoch} active; write pause {result.pause_ms:.0f} ms "
                                  f"(drain {result.drain_ms:.0f} ms)")
            return result
        finally:
            steps.close()
            if attempt is not None and not lease_lost:
                with contextlib.suppress(Exception):  # a rerun's recovery settles it otherwise
                    self._settle(sw.migration, f"{sw.kind} attempt {attempt}: {result.outcome.replace('_', ' ')}")


def _finished(orch: Orchestrator, kind: str, migration: str, recovered: list[str]) -> SwitchResult | None:
    """The rerun after a crash past the point of no return: recovery finished the attempt,
    and that is this command's result (it does not go on to another switch)."""
    if orch.finished is None or orch.finished[0]["kind"] != kind:
        return None
    attempt, epoch = orch.finished
    return SwitchResult(kind, migration, DONE, ExitCode.OK, attempt["wave"], epoch, recovered=recovered,
                        message=f"finished the interrupted {kind} (attempt {attempt['attempt']}): epoch {epoch} active")


@contextlib.contextmanager
def _lease(pinned: ControlStore, migration: str, kind: str, opts: SwitchOptions):
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
    with store.pinned() as pinned, _lease(pinned, migration, CUTOVER, opts) as lease:
        orch = Orchestrator(config, pinned, progress, lease)
        recovered = [] if opts.dry_run else orch.recover(migration)
        done = _finished(orch, CUTOVER, migration, recovered)
        if done is not None:
            return done
        result = orch.run(orch.cutover_switch(migration, opts.only), opts)
        result.recovered = recovered
        return result


def reconcile_probe(config: Config, store: ControlStore, migration: str, opts: SwitchOptions) -> SwitchResult:
    """While baking: the rollback's pause (targets fenced, reverse streams drained) up to the
    migration's reconciliation checks, then backed out: the sides compared at a consistent
    point without moving anything. RECONCILED, RECONCILE_FAILED (nothing moved either),
    or why it could not run (gates, budget)."""
    rules = reconcile_rules(store, migration, opts)
    if not rules:
        raise MigrationError(f"migration {migration} has no reconciliation checks to probe")
    with store.pinned() as pinned, _lease(pinned, migration, ROLLBACK, opts) as lease:
        orch = Orchestrator(config, pinned, None, lease)
        orch.recover(migration)  # an attempt a crash left running is settled first, as a rollback would
        return orch.run(orch.rollback_switch(migration), replace(opts, probe=True, reconcile=rules))


def rollback(config: Config, store: ControlStore, migration: str, opts: SwitchOptions,
             progress: Progress | None = None) -> SwitchResult:
    """Recover any interrupted attempt, then move every cut-over key back to its source."""
    with store.pinned() as pinned, _lease(pinned, migration, ROLLBACK, opts) as lease:
        orch = Orchestrator(config, pinned, progress, lease)
        recovered = [] if opts.dry_run else orch.recover(migration)
        done = _finished(orch, ROLLBACK, migration, recovered)
        if done is not None:
            return done
        pinned.migration(migration)  # an unknown name is an error, not "nothing to roll back"
        if not any(w["state"] == "cut" for w in pinned.waves(migration)):
            return SwitchResult(ROLLBACK, migration, DONE, ExitCode.OK, recovered=recovered,
                                message="nothing is cut over: the sources own every key")
        result = orch.run(orch.rollback_switch(migration), opts)
        result.recovered = recovered
        return result

