"""The one way reshard retries a call and waits for a condition.

``retry`` repeats a call while it fails in a way the caller names as transient (a Kafka
Connect rebalance, a registry that does not answer yet, a cluster session the server
ended), for a number of attempts or a length of time, with backoff. ``poll`` repeats a
check until it yields a value or a deadline passes, then raises ``WaitTimeout`` naming
what it waited for. Both take the clock and the sleep as arguments, so their policy is
unit-tested without waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from reshard.errors import WaitTimeout

T = TypeVar("T")
Transient = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _is_transient(exc: BaseException, on: Transient) -> bool:
    return isinstance(exc, on) if isinstance(on, tuple) else on(exc)


def retry(call: Callable[[], T], *, on: Transient, attempts: int | None = None, for_s: float | None = None,
          delay: float = 0.5, backoff: float = 1.0, max_delay: float = 5.0, jitter: float = 0.0,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """``call()``, again after ``delay`` (times ``backoff`` each time, at most ``max_delay``,
    plus up to ``jitter`` seconds at random) while it raises an error ``on`` accepts, until
    ``attempts`` calls were made or ``for_s`` seconds passed; then that error is raised."""
    if attempts is None and for_s is None:
        raise ValueError("retry needs attempts or for_s")
    give_up = None if for_s is None else clock() + for_s
    made = 0
    while True:
        try:
            return call()
        except BaseException as exc:
            made += 1
            if not _is_transient(exc, on):
                raise
            pause = min(delay, max_delay) + (random.uniform(0, jitter) if jitter else 0.0)
            out_of_attempts = attempts is not None and made >= attempts
            out_of_time = give_up is not None and clock() + pause > give_up
            if out_of_attempts or out_of_time:
                raise
        sleep(pause)
        delay *= backoff


def poll(check: Callable[[], T | None], *, timeout: float, interval: float, what: str | Callable[[], str],
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """The first value other than None (or False) that ``check()`` returns, calling it every
    ``interval`` seconds; WaitTimeout("<what> within <timeout>s") once ``timeout`` passed.
    ``what`` may be a function, called only then (to show the last state seen)."""
    deadline = clock() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if clock() >= deadline:
            said = what() if callable(what) else what
            raise WaitTimeout(f"{said} within {timeout:.0f}s")
        sleep(min(interval, max(0.0, deadline - clock())))
