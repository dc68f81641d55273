"""Scheduled cutovers (cron, CI): a time window, and waiting a bounded time for the gates."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime
from zoneinfo import ZoneInfo

from reshard.errors import ConfigError, WaitTimeout
from reshard.retry import poll

_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class Window:
    start: dtime
    end: dtime
    tz: str  # "local" or an IANA zone

    def now(self) -> datetime:
        return datetime.now() if self.tz == "local" else datetime.now(ZoneInfo(self.tz))

    def contains(self, moment: datetime | None = None) -> bool:
        t = (moment or self.now()).time().replace(tzinfo=None)
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # over midnight, e.g. 22:00-02:00

    def seconds_left(self, moment: datetime | None = None) -> float:
        """Seconds until the window closes (0 when outside)."""
        m = moment or self.now()
        if not self.contains(m):
            return 0.0
        end = m.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        delta = (end - m).total_seconds()
        return delta if delta > 0 else delta + 86400

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} ({self.tz})"


def parse_window(spec: str, tz: str = "local") -> Window:
    m = _WINDOW.match(spec.strip())
    if not m:
        raise ConfigError(f"--window {spec!r}: expected HH:MM-HH:MM, e.g. 02:00-05:00")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        raise ConfigError(f"--window {spec!r}: not a valid, non-empty range of times")
    if tz != "local":
        try:
            ZoneInfo(tz)
        except Exception:
            raise ConfigError(f"--timezone {tz!r} is not a known time zone (e.g. UTC, Europe/Berlin)") from None
    return Window(dtime(h1, m1), dtime(h2, m2), tz)


def wait_for_gates(check, timeout: float, window: Window | None = None, interval: float = 2.0,
                   say=None, say_every: float = 10.0):
    """Call ``check()`` (-> list of gates) until all pass, ``timeout`` passes, or the window
    closes. Returns the last gates. ``say`` hears what is waited for, with the failing
    gates' current values, when they change and at least every ``say_every`` seconds."""
    limit = timeout if window is None else min(timeout, window.seconds_left())
    deadline = time.monotonic() + limit
    said, said_at = "", 0.0
    gates: list = []

    def met() -> bool:
        nonlocal gates, said, said_at
        gates = check()
        if all(g.ok for g in gates):
            if said and say:
                say("gates met: " + "; ".join(f"{g.name}: {g.detail}" for g in gates))
            return True
        if say is None:
            return False
        now_failing = "; ".join(f"{g.name}: {g.detail}" for g in gates if not g.ok)
        if now_failing != said or time.monotonic() - said_at >= say_every:
            say(f"waiting for the gates ({max(0.0, deadline - time.monotonic()):.0f}s left): {now_failing}")
            said, said_at = now_failing, time.monotonic()
        return False
    with contextlib.suppress(WaitTimeout):
        poll(met, timeout=max(0.0, limit), interval=interval, what="the gates")
    return gates
