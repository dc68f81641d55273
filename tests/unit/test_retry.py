"""The retry and poll policies, on a fake clock."""

import pytest

from reshard.errors import Unavailable, WaitTimeout
from reshard.retry import poll, retry


class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def failing(times: int, exc: BaseException, value="ok"):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return value
    return call, calls


def test_retries_transient_errors_with_backoff_up_to_a_cap():
    clock = Clock()
    call, calls = failing(4, Unavailable("down"))
    assert retry(call, on=(Unavailable,), attempts=5, delay=0.5, backoff=2, max_delay=1.5,
                 sleep=clock.sleep, clock=clock) == "ok"
    assert len(calls) == 5 and clock.sleeps == [0.5, 1.0, 1.5, 1.5]


def test_gives_up_after_the_attempts_with_the_last_error():
    clock = Clock()
    call, calls = failing(10, Unavailable("still down"))
    with pytest.raises(Unavailable, match="still down"):
        retry(call, on=(Unavailable,), attempts=3, sleep=clock.sleep, clock=clock)
    assert len(calls) == 3


def test_gives_up_when_the_next_wait_would_pass_the_time_allowed():
    clock = Clock()
    call, calls = failing(100, Unavailable("down"))
    with pytest.raises(Unavailable):
        retry(call, on=(Unavailable,), for_s=2.0, delay=0.5, sleep=clock.sleep, clock=clock)
    assert len(calls) == 5 and clock.now == 2.0


def test_other_errors_are_not_retried_and_a_predicate_can_choose():
    clock = Clock()
    call, calls = failing(1, ValueError("bad input"))
    with pytest.raises(ValueError):
        retry(call, on=(Unavailable,), attempts=5, sleep=clock.sleep, clock=clock)
    assert len(calls) == 1
    call, calls = failing(2, Unavailable("409"))
    assert retry(call, on=lambda e: "409" in str(e), attempts=5, sleep=clock.sleep, clock=clock) == "ok"
    with pytest.raises(ValueError):
        retry(lambda: 1, on=(Unavailable,))  # neither attempts nor a time


def test_poll_returns_the_first_value_and_names_what_it_waited_for():
    clock = Clock()
    seen = iter([None, False, {"state": "RUNNING"}])
    assert poll(lambda: next(seen), timeout=10, interval=0.3, what="x", sleep=clock.sleep, clock=clock) == {
        "state": "RUNNING"}
    assert clock.sleeps == [0.3, 0.3]
    last = {"state": "PAUSED"}
    with pytest.raises(WaitTimeout, match=r"connector c1 RUNNING \(last: PAUSED\) within 1s"):
        poll(lambda: None, timeout=1, interval=0.3, what=lambda: f"connector c1 RUNNING (last: {last['state']})",
             sleep=clock.sleep, clock=clock)
