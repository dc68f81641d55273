"""Failpoints fire where and when they are named, once per process."""

import pytest

from reshard import failpoints
from reshard.failpoints import FAILPOINT_ENV, FAILPOINT_SLEEP_ENV, failpoint


@pytest.fixture
def armed(monkeypatch):
    monkeypatch.setattr(failpoints, "_fired", set())
    monkeypatch.setattr(failpoints, "_hits", failpoints.Counter())
    monkeypatch.setenv(FAILPOINT_SLEEP_ENV, "0")

    def arm(point: str) -> None:
        monkeypatch.setenv(FAILPOINT_ENV, point)
    return arm


def test_a_point_fires_once_at_its_name(armed, capsys):
    armed("copy_batch:committed")
    failpoint("copy_batch", "piped")
    failpoint("apply_batch", "committed")
    assert capsys.readouterr().err == ""
    for _ in range(3):
        failpoint("copy_batch", "committed")
    assert capsys.readouterr().err.count("failpoint copy_batch:committed reached") == 1


def test_a_count_fires_at_the_nth_time(armed, capsys):
    armed("apply_batch:committed#3")
    failpoint("apply_batch", "committed")
    failpoint("apply_batch", "committed")
    assert capsys.readouterr().err == ""
    failpoint("apply_batch", "committed")
    failpoint("apply_batch", "committed")
    assert capsys.readouterr().err.count("failpoint apply_batch:committed#3 reached") == 1
