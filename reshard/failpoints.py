"""Named failpoints: places where a test makes a reshard process crash or stall.

``RESHARD_FAILPOINT=<name>:<when>`` (e.g. ``activate:before``, ``flip_to:locked``) makes
the process announce the point on stderr and stall there, for
``RESHARD_FAILPOINT_SLEEP`` seconds (default 120: long enough to be SIGKILLed), or, with
``RESHARD_FAILPOINT_SLEEP=stop``, stop itself with SIGSTOP, frozen whole (every thread)
until a SIGCONT, as a paused VM or a swap storm freezes it. Each point fires once per
process. Never set in production.
"""

from __future__ import annotations

import os
import signal
import sys
import time

FAILPOINT_ENV = "RESHARD_FAILPOINT"
FAILPOINT_SLEEP_ENV = "RESHARD_FAILPOINT_SLEEP"
_fired: set[str] = set()


def failpoint(name: str, when: str) -> None:
    point = f"{name}:{when}"
    if os.environ.get(FAILPOINT_ENV) != point or point in _fired:
        return
    _fired.add(point)
    print(f"reshard: failpoint {point} reached", file=sys.stderr, flush=True)
    action = os.environ.get(FAILPOINT_SLEEP_ENV, "120")
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        time.sleep(float(action))
