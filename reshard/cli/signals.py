"""How the long-running commands stop: Ctrl-C and SIGTERM, whatever the parent shell left them."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading

from reshard.exit_codes import ExitCode

STOP_GRACE_S = 30.0  # after SIGINT/SIGTERM, `reshard apply` exits within this long, graceful or not


def interrupt_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, which ends a watch with exit 0.

    Set explicitly: a process started in the background by a shell without job control
    (a CI script, ``cmd &``) inherits SIGINT *ignored*, and Python then leaves it ignored,
    so a Ctrl-C (or a test's SIGINT) would never stop the watch."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)


def stop_on_signals(stop: threading.Event, what: str, grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT and SIGTERM set ``stop`` (a worker finishes and commits the batch in flight);
    one that has not stopped ``grace_s`` later exits anyway, printing its threads' stacks.
    Nothing is lost that way: offsets are committed only after their batch is applied, and
    a replay of what follows them has no second effect."""
    def handler(*_: object) -> None:
        if stop.is_set():
            return
        stop.set()

        def force() -> None:
            print(f"{what}: did not stop within {grace_s:.0f}s of the signal; exiting now "
                  "(nothing is lost: uncommitted records are applied again, idempotently). Stacks:",
                  file=sys.stderr, flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            os._exit(ExitCode.OK)

        timer = threading.Timer(grace_s, force)
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
