"""The copy throttle's arithmetic, on a simulated clock (no server, no real sleeping)."""

from reshard.snapshotter.throttle import (
    BACKOFF,
    FLOOR_BYTES_S,
    LOOK_EVERY_S,
    RECOVER,
    START_BYTES_S,
    CopyThrottle,
    LatencySamples,
    ThrottleSettings,
    ramp_seconds,
)


class Clock:
    def __init__(self):
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s


def throttle(clock: Clock, **settings) -> CopyThrottle:
    return CopyThrottle(ThrottleSettings(adaptive=False, **settings), clock=clock, sleep=clock.sleep)


def test_without_limits_nothing_waits():
    clock = Clock()
    t = throttle(clock)
    for _ in range(100):
        t.take(1 << 20)
    assert clock.slept == 0 and t.limit() is None and t.describe() == "unthrottled"


def test_a_bytes_limit_holds_the_average_rate():
    clock = Clock()
    t = throttle(clock, max_bytes_per_s=100_000)
    for _ in range(50):
        t.take(20_000)  # 1,000,000 bytes at 100,000 B/s: about 10 s, the first second's worth free
    assert 8.5 <= clock.slept <= 10.5, clock.slept
    assert "throttled to 0.1 MiB/s: --max-bytes-per-second 100000" == t.describe()


def test_a_rows_limit_uses_the_measured_row_width():
    clock = Clock()
    t = throttle(clock, max_rows_per_s=1000)
    t.landed(rows=10_000, nbytes=2_000_000)  # 200 bytes a row
    assert t.limit() == 200_000
    t.landed(rows=10_000, nbytes=0)  # the average over everything copied so far
    assert t.limit() == 100_000


def test_the_adaptive_limit_backs_off_past_the_budget_recovers_and_lifts():
    clock = Clock()
    changes = []
    t = CopyThrottle(ThrottleSettings(max_latency_impact_ms=5.0), on_change=changes.append, clock=clock,
                     sleep=clock.sleep)
    for _ in range(40):  # 40 chunks of 1 MiB in two seconds: 20 MiB/s flowing
        t.take(1 << 20)
        clock.now += 0.05
    t.look(4.0, lag=0.0)  # within the budget: an unthrottled copy stays so
    assert t.limit() is None
    t.look(7.5, lag=0.0)  # the application's p95 is 7.5 ms above before the copy: back off
    first = t.limit()
    assert first is not None and first < 20 * (1 << 20) * BACKOFF * 1.1
    assert "the application's transactions p95 +7.5 ms on the source, over the budget 5 ms" in t.describe()
    assert changes
    for _ in range(30):
        t.look(9.0, lag=0.0, measured_on="statement")
    assert t.limit() == FLOOR_BYTES_S  # never below the floor: the copy always progresses
    assert "a statement p95 +9.0 ms" in t.describe()
    t.look(1.0, lag=0.0)  # back within the budget: recover gradually
    assert FLOOR_BYTES_S < t.limit() < 2 * FLOOR_BYTES_S
    clock.now += 10  # nothing flowed lately: the limit no longer binds and is lifted
    for _ in range(10):
        t.look(1.0, lag=0.0)
    assert t.limit() is None and t.describe() == "unthrottled"
    t.look(1.0, lag=30.0)  # a replica lagging is the other signal
    assert "a physical replica of the source lags 30 s" in t.describe()


def test_no_application_on_the_source_lifts_the_limit_at_once():
    clock = Clock()
    t = CopyThrottle(ThrottleSettings(), clock=clock, sleep=clock.sleep)
    t.look(12.0, lag=0.0)
    assert t.limit() is not None
    t.look(None, lag=0.0)  # the application left: no one to spare
    assert t.limit() is None
    t.look(None, lag=0.0)
    assert t.limit() is None and t.reason == "adaptive, no application on the source"
    t.look(None, lag=30.0)  # replicas are still spared
    assert t.limit() is not None


def test_samples_say_idle_application_or_statement():
    s = LatencySamples()
    now = 100.0
    for i in range(100):  # two seconds of samples, nobody on the source
        s.add(now + i * 0.02, [], False, 0.5)
    assert s.judge(now + 2.0) == ("idle", None)
    for i in range(100):  # an application in flight at every sample, 1..100 ms old
        s.add(now + 2.0 + i * 0.02, [float(i + 1)], True, 0.5)
    kind, ms = s.judge(now + 4.0)
    assert kind == "application" and 94 <= ms <= 96
    s.add(now + 4.1, [120_000.0], True, 0.5)  # a transaction open for minutes is not latency
    assert s.judge(now + 4.1)[1] < 100
    sparse = LatencySamples()
    for i in range(100):  # present, but too rarely in flight to sample: the statement's trip judges
        sparse.add(now + i * 0.02, [3.0] if i % 10 == 0 else [], i % 10 == 0, 0.4 + (i % 20) * 0.1)
    kind, ms = sparse.judge(now + 2.0)
    assert kind == "statement" and 2.0 <= ms <= 2.3
    hidden = LatencySamples(sees_all=False)  # other users' sessions hidden: never judged idle
    hidden.add(now, [], False, 0.7)
    assert hidden.judge(now + 5.0) == ("statement", 0.7)


def test_the_fixed_cap_still_holds_under_a_looser_adaptive_limit():
    clock = Clock()
    t = CopyThrottle(ThrottleSettings(max_bytes_per_s=FLOOR_BYTES_S), clock=clock, sleep=clock.sleep)
    t.look(50.0, lag=0.0)
    assert t.limit() == FLOOR_BYTES_S


def test_ramp_seconds_is_the_throttle_letting_bytes_through_on_a_healthy_source():
    """`reshard check`'s model of the default copy, against the bucket stepped look by look."""
    def stepped(nbytes: float, ceiling: float) -> float:
        t, through, limit = 0.0, 0.0, float(START_BYTES_S)
        while through < nbytes:
            rate = min(limit, ceiling)
            step = min(LOOK_EVERY_S, (nbytes - through) / rate)
            through += rate * step
            t += step
            limit *= RECOVER
        return t

    for nbytes, ceiling in ((1e6, 30e6), (60e6, 30e6), (6e9, 30e6), (60e6, 0.5e6)):
        assert abs(ramp_seconds(nbytes, ceiling) - stepped(nbytes, ceiling)) <= 0.1 * stepped(nbytes, ceiling) + 0.5
    assert ramp_seconds(0, 30e6) == 0.0
    assert ramp_seconds(60e6, 0.5e6) == 120.0  # a ceiling under the start: the ceiling from the first byte
