from datetime import datetime

import pytest

from reshard.cutover.schedule import parse_window, wait_for_gates
from reshard.errors import ConfigError


def test_window_same_day_and_over_midnight():
    w = parse_window("02:00-05:00")
    assert w.contains(datetime(2026, 1, 1, 2, 0))
    assert w.contains(datetime(2026, 1, 1, 4, 59))
    assert not w.contains(datetime(2026, 1, 1, 5, 0))
    n = parse_window("22:00-02:00", "UTC")
    assert n.contains(datetime(2026, 1, 1, 23, 30)) and n.contains(datetime(2026, 1, 1, 1, 0))
    assert not n.contains(datetime(2026, 1, 1, 12, 0))
    assert n.seconds_left(datetime(2026, 1, 1, 23, 0)) == 3 * 3600


@pytest.mark.parametrize("spec,tz", [("2-5", "local"), ("25:00-02:00", "local"), ("02:00-02:00", "local"),
                                     ("02:00-03:00", "Mars/Olympus")])
def test_bad_windows_are_refused(spec, tz):
    with pytest.raises(ConfigError):
        parse_window(spec, tz)


class G:
    def __init__(self, ok):
        self.ok = ok


def test_wait_for_gates_returns_once_all_pass_or_times_out():
    answers = iter([[G(False)], [G(False)], [G(True)]])
    assert wait_for_gates(lambda: next(answers), timeout=5, interval=0.01)[0].ok
    assert not wait_for_gates(lambda: [G(False)], timeout=0.05, interval=0.01)[0].ok


def test_waiting_for_gates_says_what_it_waits_for_and_when_it_is_met():
    from dataclasses import dataclass

    @dataclass
    class Gate:
        name: str
        ok: bool
        detail: str

    readings = iter([[Gate("lag", False, "5,000 records behind (max 1,000)")],
                     [Gate("lag", False, "5,000 records behind (max 1,000)")],
                     [Gate("lag", False, "2,000 records behind (max 1,000)")],
                     [Gate("lag", True, "200 records behind (max 1,000)")]])
    said: list[str] = []
    gates = wait_for_gates(lambda: next(readings), 60, interval=0.0, say=said.append)
    assert gates[0].ok
    assert said == ["waiting for the gates (60s left): lag: 5,000 records behind (max 1,000)",
                    "waiting for the gates (60s left): lag: 2,000 records behind (max 1,000)",
                    "gates met: lag: 200 records behind (max 1,000)"]
