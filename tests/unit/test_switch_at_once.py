"""Inside the write pause a step runs on every cluster at once (cutover/steps.py at_once):
the calls overlap, every one ends before the step does, and a failure is raised only after."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from reshard.cutover.steps import at_once


def test_the_calls_overlap_and_their_results_are_keyed():
    met = threading.Barrier(3, timeout=5)  # breaks (BrokenBarrierError) if the calls ran one after another

    def call(c: str) -> str:
        met.wait()
        return c.upper()
    with ThreadPoolExecutor(8) as pool:
        assert at_once(pool, ["s1", "s2", "s3"], call) == {"s1": "S1", "s2": "S2", "s3": "S3"}


def test_a_failure_is_raised_after_every_call_ended_and_the_first_in_order_wins():
    ended: list[str] = []

    def call(c: str) -> None:
        if c == "s3":
            raise RuntimeError("s3 failed")
        if c == "s1":
            time.sleep(0.3)  # the slow one: still finished when the step fails
            ended.append(c)
            raise ValueError("s1 failed")
        ended.append(c)
    with ThreadPoolExecutor(8) as pool, pytest.raises(ValueError, match="s1 failed"):
        at_once(pool, ["s1", "s2", "s3"], call)
    assert sorted(ended) == ["s1", "s2"]
