"""The report's series: rates from successive totals per worker, summed; lags per bucket."""

from datetime import UTC, datetime, timedelta

from reshard.observe.report import series

T0 = datetime(2026, 11, 22, 0, 0, 0, tzinfo=UTC)


def _s(worker, seconds, applied, lag_s=None, lag_r=None):
    return {"worker": worker, "at": T0 + timedelta(seconds=seconds), "records": applied, "applied": applied,
            "lag_seconds": lag_s, "lag_records": lag_r}


def test_two_workers_rates_add_up_and_lags_combine():
    samples = [_s("a", 0, 0, 0.1, 10), _s("b", 1, 0, 0.3, 5),
               _s("a", 10, 1000, 0.2, 7), _s("b", 11, 500, 0.5, 3),
               _s("a", 20, 3000, 0.1, 0), _s("b", 21, 500, None, None)]
    s = series(samples)
    assert s.events_per_s == [0.0, 150.0, 200.0]
    assert s.lag_seconds == [0.3, 0.5, 0.1]
    assert s.lag_records == [15, 10, 0]


def test_a_restarted_worker_does_not_count_its_reset_totals_as_negative_rate():
    s = series([_s("a", 0, 5000), _s("a", 10, 10), _s("a", 20, 1010)])
    assert s.events_per_s == [0.0, 0.0, 100.0]
