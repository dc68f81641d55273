"""Steering a running migration: pause, resume and throttle, through the control database.

`reshard pause|resume|throttle` write ``settings.control`` of the migration (ControlStore
``set_control``, audited); every process that does the work reads it at most every
``EVERY_S`` and obeys: the copy (its throttle's bucket), the appliers (their consumer stops
fetching, heartbeats go on) and `complete`'s deletes (between batches). Nothing is lost by
a pause (work stops between units that commit with their positions), and the state survives
restarts: a process that starts paused waits.

    control = {"copy": "paused"|"running", "apply": …, "complete": …,
               "throttle": {"max_rows_per_second": float|None, "max_bytes_per_second": float|None,
                            "max_slot_wal_bytes": int|None, "max_latency_impact_ms": int|None,
                            "adaptive": bool|None}}
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reshard.control.store import ControlStore

log = logging.getLogger("reshard.live_control")
EVERY_S = 1.0  # a running process sees a change within this (plus its own step: well under 2 s)
PARTS = ("copy", "apply", "complete")


@dataclass(frozen=True)
class Controls:
    paused: frozenset[str] = frozenset()
    throttle: dict[str, Any] = field(default_factory=dict)


def controls_of(settings: dict) -> Controls:
    c = settings.get("control") or {}
    return Controls(frozenset(p for p in PARTS if c.get(p) == "paused"), dict(c.get("throttle") or {}))


class LiveControl:
    """What the operator asks of one migration now, read from the control database at most
    every ``every_s`` (a failed read keeps the last answer: steering never stops the work)."""

    def __init__(self, store: ControlStore, migration: str, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.migration, self.every_s, self._clock = store, migration, every_s, clock
        self._at = -1e9
        self._now = Controls()
        self._lock = threading.Lock()

    def now(self) -> Controls:
        with self._lock:
            if self._clock() - self._at >= self.every_s:
                self._at = self._clock()
                try:
                    self._now = controls_of(self.store.migration(self.migration).settings)
                except Exception as exc:  # the control database away: keep going as last told
                    log.debug("live control: %s", exc)
            return self._now

    def paused(self, part: str) -> bool:
        return part in self.now().paused

    def wait_while_paused(self, part: str, stop: threading.Event | None = None) -> float:
        """Block while ``part`` is paused (said once, and when it resumes); seconds waited."""
        if not self.paused(part):
            return 0.0
        started = self._clock()
        log.warning("%s of %s paused by `reshard pause`; waiting for `reshard resume %s`", part, self.migration,
                    self.migration)
        while self.paused(part) and not (stop is not None and stop.is_set()):
            time.sleep(min(0.2, self.every_s))
        waited = self._clock() - started
        log.warning("%s of %s resumed after %.0fs", part, self.migration, waited)
        return waited
