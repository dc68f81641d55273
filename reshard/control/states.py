"""The migration state machine. Transitions are checked in the control database,
so two processes can never both believe they moved a migration forward."""

from __future__ import annotations

PLANNED = "planned"            # maps and moves recorded, nothing created on any cluster
SNAPSHOTTING = "snapshotting"  # slots exist; the copy is running or resumable
STREAMING = "streaming"        # copy done; changes stream forward (some waves may be cut over)
CUT_OVER = "cut_over"          # every wave cut over; reverse replication keeps rollback possible
COMPLETED = "completed"        # the point of no return passed: streams dropped, sources cleaned
ABORTED = "aborted"            # stopped before cutover; what it created was dropped

TRANSITIONS: dict[str, set[str]] = {
    PLANNED: {SNAPSHOTTING, ABORTED},
    SNAPSHOTTING: {STREAMING, ABORTED},
    STREAMING: {CUT_OVER, ABORTED},
    CUT_OVER: {STREAMING, COMPLETED},  # STREAMING again after a rollback
    COMPLETED: set(),
    ABORTED: set(),
}

ALL = tuple(TRANSITIONS)
LIVE = (PLANNED, SNAPSHOTTING, STREAMING, CUT_OVER)  # may still create, copy or stream rows


def can_move(current: str, new: str) -> bool:
    return new == current or new in TRANSITIONS.get(current, set())
