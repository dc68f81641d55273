"""The switch's two policies, on plain data: before the point of no return (the targets'
flip) a failure backs out; from it on the switch only goes forward, retrying, and never
backs out, whatever the budget says. A fake CutoverSteps and an in-memory store record
what the orchestrator asked for."""

from __future__ import annotations

import psycopg
import pytest

from reshard.control.states import State
from reshard.cutover import orchestrator as o
from reshard.cutover.steps import Switch, SwitchKind
from reshard.errors import BudgetExceeded, SwitchIncomplete
from reshard.exit_codes import ExitCode
from reshard.kafka.connect_client import ConnectError
from reshard.maps.shardmap import parse_map

GROUP = {"key": "bigint", "tables": {"public.accounts": "id"}}
BEFORE = parse_map({"name": "b", "groups": {"a": {**GROUP, "hash": {"buckets": 16, "clusters": {"s": "0-15"}}}}})
AFTER = parse_map({"name": "a", "groups": {"a": {**GROUP, "hash": {"buckets": 16, "clusters": {
    "s": "0-7", "t": "8-15"}}}}})


class FakeStore:
    def __init__(self):
        self.steps: list[tuple[str, str]] = []
        self.finished: list[str] = []
        self.states: list[str] = []

    def migration(self, _name):
        return type("Rec", (), {"settings": {}})()

    def begin_attempt(self, *_a, **_k):
        return 1

    def set_state(self, _m, state, **_k):
        self.states.append(state)

    def record_steps(self, _m, _attempt, records):
        self.steps.extend((r.step, r.status) for r in records)

    def finish_attempt(self, _m, _attempt, state, _detail):
        self.finished.append(state)

    def set_wave_pause(self, *_a):
        pass

    def settled_state(self, _m):
        return State.STREAMING


class FakeSteps:
    """Each step appends its name to ``calls``; ``fail`` maps a step to the exceptions it
    raises on its first calls (one per call), ``slow`` to seconds it takes."""

    def __init__(self, fail=None, slow=None):
        self.calls: list[str] = []
        self.fail = {k: list(v) for k, v in (fail or {}).items()}
        self.slow = slow or {}
        self.unfenced_at = None

    def _do(self, name, out=None):
        self.calls.append(name)
        if self.fail.get(name):
            raise self.fail[name].pop(0)
        if name in self.slow:
            import time
            time.sleep(self.slow[name])
        return {} if out is None else out

    def prepare(self): return self._do("prepare")
    def register_map(self): return self._do("register_map", 2)
    def fence_from(self, budget_s): return self._do("fence", {"s": "deadline"})
    def drain_position(self): return self._do("drain_position", {"fwd": "0/1"})
    def drain(self, positions, deadline): return self._do("drain")
    def sync_sequences(self): return self._do("sequences")
    def reconcile(self, rules, deadline): return self._do("reconcile", [])
    def flip_from(self, epoch, deadlines): return self._do("flip_from")
    def flip_to(self, epoch): return self._do("flip_to")
    def activate(self, epoch, pause_ms, drain_ms): return self._do("activate")
    def after_flip(self): return self._do("after_flip")
    def back_out(self): return self._do("back_out")
    def quiet_reverse(self): return self._do("quiet_reverse")
    def close(self): pass


def attempt(steps: FakeSteps, budget: float = 2.0) -> tuple[o._Attempt, FakeStore]:
    store = FakeStore()
    orch = o.Orchestrator(None, store)  # type: ignore[arg-type]
    sw = Switch(SwitchKind.CUTOVER, "m", 1, BEFORE, AFTER)
    result = o.SwitchResult(SwitchKind.CUTOVER, "m", o.Outcome.DONE, ExitCode.OK)
    return o._Attempt(orch, sw, o.SwitchOptions(max_write_pause=budget), steps, result), store


def test_a_failure_before_the_targets_flip_backs_out():
    steps = FakeSteps(fail={"flip_from": [BudgetExceeded("deadline passed")]})
    a, store = attempt(steps)
    result = a.run()
    assert result.exit_code == ExitCode.CUTOVER_ABORTED and result.outcome == o.Outcome.ABORTED
    assert "back_out" in steps.calls and "flip_to" not in steps.calls and "activate" not in steps.calls
    assert store.finished == ["aborted"]


def test_a_lost_session_before_the_targets_flip_backs_out_with_exit_12():
    steps = FakeSteps(fail={"drain": [psycopg.OperationalError("server closed the connection unexpectedly")]})
    result = attempt(steps)[0].run()
    assert result.exit_code == ExitCode.CUTOVER_ABORTED and "back_out" in steps.calls


def test_the_budget_spent_before_the_targets_flip_backs_out():
    steps = FakeSteps(slow={"flip_from": 0.3})
    result = attempt(steps, budget=0.2)[0].run()
    assert result.exit_code == ExitCode.CUTOVER_ABORTED and "budget" in result.message
    assert "flip_to" not in steps.calls


def test_past_the_targets_flip_it_retries_and_goes_forward(monkeypatch):
    monkeypatch.setattr(o.time, "sleep", lambda _s: None)
    lost = psycopg.OperationalError("terminating connection due to idle-in-transaction timeout")
    steps = FakeSteps(fail={"flip_to": [lost, lost], "activate": [psycopg.OperationalError("control db gone")],
                            "after_flip": [ConnectError("(500) Cannot complete request because a rebalance is "
                                                        "expected")]})
    a, store = attempt(steps)
    result = a.run()
    assert result.exit_code == ExitCode.OK and result.outcome == o.Outcome.DONE
    assert steps.calls.count("flip_to") == 3 and steps.calls.count("activate") == 2
    assert "back_out" not in steps.calls
    assert ("flip_to", "failed") in store.steps and store.finished == ["done"]


def test_past_the_targets_flip_the_budget_does_not_matter():
    steps = FakeSteps(slow={"flip_to": 1.2})
    result = attempt(steps, budget=1.0)[0].run()
    assert result.exit_code == ExitCode.OK and "over the 1.00s budget" in result.message
    assert "back_out" not in steps.calls


def test_past_the_targets_flip_a_step_that_keeps_failing_leaves_the_attempt_to_a_rerun(monkeypatch):
    monkeypatch.setattr(o, "FORWARD_RETRY_S", 0.05)
    monkeypatch.setattr(o.time, "sleep", lambda _s: None)
    steps = FakeSteps(fail={"activate": [psycopg.OperationalError("gone")] * 10_000})
    a, store = attempt(steps)
    with pytest.raises(SwitchIncomplete, match="run again"):
        a.run()
    assert "back_out" not in steps.calls and store.finished == []
    assert a.left_to_recovery  # the attempt stays running: `run` does not settle it


def test_an_interrupt_past_the_targets_flip_backs_nothing_out():
    steps = FakeSteps(fail={"activate": [KeyboardInterrupt()]})
    a, store = attempt(steps)
    with pytest.raises(KeyboardInterrupt):
        a.run()
    assert "back_out" not in steps.calls and store.finished == [] and a.left_to_recovery
