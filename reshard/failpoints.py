"""Named failpoints: places where a test makes a reshard process crash or stall.

``RESHARD_FAILPOINT=<name>:<when>`` (e.g. ``activate:before``, ``flip_to:locked``) makes
the process announce the point on stderr and stall there, for
``RESHARD_FAILPOINT_SLEEP`` seconds (default 120: long enough to be SIGKILLed), or, with
``RESHARD_FAILPOINT_SLEEP=stop``, stop itself with SIGSTOP, frozen whole (every thread)
until a SIGCONT, as a paused VM or a swap storm freezes it. ``<name>:<when>#<n>`` fires at
the n-th time the point is reached (``copy_batch:committed#10``: after ten batches). Each
point fires once per process. Never set in production.

The points: the switch's steps (``<step>:before``/``after``, ``fence:before``,
``<point>:locked`` holding a fence lock), the copy (``copy_batch:piped``: a batch's rows
written in the target's open transaction; ``copy_batch:committed``: committed with its
cursor), the apply (``apply_batch:staged``: a batch applied in the targets' open
transaction; ``apply_batch:committed``: committed there, its Kafka offsets not yet), a
schema change (``ddl_apply:applied``: made on one destination, not yet recorded).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter

FAILPOINT_ENV = "RESHARD_FAILPOINT"
FAILPOINT_SLEEP_ENV = "RESHARD_FAILPOINT_SLEEP"
_fired: set[str] = set()
_hits: Counter[str] = Counter()
_lock = threading.Lock()


def failpoint(name: str, when: str) -> None:
    wanted = os.environ.get(FAILPOINT_ENV)
    if not wanted:
        return
    point = f"{name}:{when}"
    target, _, nth = wanted.partition("#")
    if target != point:
        return
    with _lock:
        _hits[point] += 1
        if wanted in _fired or _hits[point] < int(nth or 1):
            return
        _fired.add(wanted)
    print(f"reshard: failpoint {wanted} reached", file=sys.stderr, flush=True)
    action = os.environ.get(FAILPOINT_SLEEP_ENV, "120")
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        time.sleep(float(action))
