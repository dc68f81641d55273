"""The migration state machine. Transitions are checked in the control database,
so two processes can never both believe they moved a migration forward."""

from __future__ import annotations

PLANNED = "planned"            # maps and moves recorded, nothing created on any cluster
SNAPSHOTTING = "snapshotting"  # slots exist; the copy is running or resumable
STREAMING = "streaming"        # copy done; the applier is (or may be) applying changes
ABORTED = "aborted"            # stopped before cutover; what it created was dropped

TRANSITIONS: dict[str, set[str]] = {
    PLANNED: {SNAPSHOTTING, ABORTED},
    SNAPSHOTTING: {STREAMING, ABORTED},
    STREAMING: {ABORTED},
    ABORTED: set(),
}

ALL = tuple(TRANSITIONS)


def can_move(current: str, new: str) -> bool:
    return new == current or new in TRANSITIONS.get(current, set())
