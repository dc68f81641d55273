"""The bake's trigger arithmetic on plain data: the routers' error rate over a sliding
window, counters summed since the bake began, user checks by exit status."""

from collections import deque
from datetime import UTC, datetime, timedelta

import click
import pytest

from reshard.cli.context import Duration
from reshard.cutover.bake import RouterTotals, error_rate_trigger, query_values, run_check


def ops(reads: int, writes: int = 0, errors: int = 0) -> dict[str, int]:
    return {"reads": reads, "writes": writes, "errors": errors}


def test_the_error_rate_is_taken_over_the_window_not_since_the_start():
    h: deque = deque()
    assert error_rate_trigger(h, ops(0), 10, 0.0, 0.05, 20) is None
    assert error_rate_trigger(h, ops(10_000), 10, 5.0, 0.05, 20) is None  # a long healthy run
    assert error_rate_trigger(h, ops(20_000), 10, 10.0, 0.05, 20) is None
    t = error_rate_trigger(h, ops(20_100, errors=60), 10, 20.0, 0.05, 20)  # a jump: 60 of 160 in the last 10 s
    assert t is not None and t.name == "routers.error_rate"
    assert t.evidence["errors"] == 60 and t.evidence["operations"] == 100


def test_too_few_operations_are_not_judged():
    h: deque = deque()
    error_rate_trigger(h, ops(0), 10, 0.0, 0.05, 20)
    assert error_rate_trigger(h, ops(5, errors=5), 10, 1.0, 0.05, 20) is None


def test_router_totals_count_from_the_first_report_or_from_zero_for_routers_started_during_the_bake():
    began = datetime(2026, 1, 1, tzinfo=UTC)
    totals = RouterTotals(began)
    old = {"router": "a", "started_at": began - timedelta(hours=1), "counters": {"reads": 1000, "errors": 50}}
    new = {"router": "b", "started_at": began + timedelta(seconds=5), "counters": {"reads": 10, "errors": 3}}
    assert totals.update([old, new])["errors"] == 3  # a's 50 errors came before the bake
    old["counters"] = {"reads": 1100, "errors": 52}
    assert totals.update([old])["errors"] == 5  # b keeps its last report
    assert totals.update([])["reads"] == 110


def test_a_user_check_fires_on_a_non_zero_exit_or_a_command_that_cannot_run():
    assert run_check("true", 5) is None
    fired = run_check("false", 5)
    assert fired is not None and fired.evidence["exit"] == 1
    assert run_check("/no/such/command", 5) is not None


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("90s", 90), ("2h", 7200), ("45", 45)])
def test_bake_durations(text, seconds):
    assert Duration().convert(text, None, None) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0"])
def test_bad_bake_durations_are_refused(text):
    with pytest.raises(click.BadParameter):
        Duration().convert(text, None, None)


def test_prometheus_answers_give_their_values_and_a_matrix_is_refused():
    vector = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"job": "app"}, "value": [1763800000.0, "1"]}, {"metric": {}, "value": [1763800000.0, "0"]}]}}
    assert query_values(vector) == [1.0, 0.0]
    assert query_values({"data": {"resultType": "vector", "result": []}}) == []  # no series: nothing fires
    assert query_values({"data": {"resultType": "scalar", "result": [1763800000.0, "0.5"]}}) == [0.5]
    with pytest.raises(ValueError, match="vector or a scalar"):
        query_values({"data": {"resultType": "matrix", "result": []}})
