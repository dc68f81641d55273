"""The migration's lifecycle, as an operator reads it in status, metrics and the event
stream. Every transition goes through ControlStore.set_state, which checks it against
TRANSITIONS under a row lock (two processes can never both believe they moved a
migration forward) and records it with who made it and why.

    planned -> building -> streaming                       (start)
    streaming <-> shadowing                                (reshard shadow: routers sample reads)
    streaming | shadowing <-> validating                   (verify --continuous runs)
    streaming | shadowing | validating | rolled_back
        -> switching                                       (a cutover attempt)
    switching -> baking                                    (the last wave cut over)
    switching -> streaming | shadowing                     (a canary wave, or backed out)
    baking -> switching -> rolled_back                     (rollback)
    baking -> finalizing -> complete                       (complete)
    any state before a cutover -> aborted                  (abort)
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A migration's state (stored as its value; a StrEnum compares equal to it)."""

    PLANNED = "planned"          # maps and moves recorded, nothing created on any cluster
    BUILDING = "building"        # slots exist; the snapshot copy runs or can resume
    STREAMING = "streaming"      # copy done; changes stream forward (canary waves may be cut over)
    SHADOWING = "shadowing"      # streaming, and routers send a sample of reads to the new owners too
    VALIDATING = "validating"    # a continuous consistency check runs (verify --continuous)
    SWITCHING = "switching"      # a cutover or rollback attempt runs (fence, drain, flip)
    BAKING = "baking"            # every wave cut over; reverse replication keeps rollback possible
    ROLLED_BACK = "rolled_back"  # every key back on its source; the forward streams run for another attempt
    FINALIZING = "finalizing"    # complete runs: streams dropped, moved rows removed from the sources
    COMPLETE = "complete"        # the point of no return passed
    ABORTED = "aborted"          # stopped before cutover; what it created was dropped


TRANSITIONS: dict[State, set[State]] = {
    State.PLANNED: {State.BUILDING, State.ABORTED},
    State.BUILDING: {State.STREAMING, State.ABORTED},
    State.STREAMING: {State.SHADOWING, State.VALIDATING, State.SWITCHING, State.ABORTED},
    State.SHADOWING: {State.STREAMING, State.VALIDATING, State.SWITCHING, State.ABORTED},
    State.VALIDATING: {State.STREAMING, State.SHADOWING, State.ROLLED_BACK, State.SWITCHING, State.ABORTED},
    # where the attempt (or its back-out) leaves it
    State.SWITCHING: {State.STREAMING, State.SHADOWING, State.BAKING, State.ROLLED_BACK},
    State.BAKING: {State.SWITCHING, State.FINALIZING},
    State.ROLLED_BACK: {State.SHADOWING, State.VALIDATING, State.SWITCHING, State.ABORTED},
    State.FINALIZING: {State.COMPLETE},
    State.COMPLETE: set(),
    State.ABORTED: set(),
}

ALL = tuple(TRANSITIONS)
# may still create, copy or stream rows
LIVE = tuple(s for s in State if s not in (State.COMPLETE, State.ABORTED))
# changes stream (forward, and after a cutover in reverse): catch-up, verify and the applier work
FLOWING = (State.STREAMING, State.SHADOWING, State.VALIDATING, State.SWITCHING, State.BAKING, State.ROLLED_BACK)
# a cutover may start from these
SWITCHABLE = (State.STREAMING, State.SHADOWING, State.VALIDATING, State.ROLLED_BACK)
# shadow reads run in these (before the keys' cutover; after it, hedged reads may go back)
SHADOWABLE = (State.STREAMING, State.SHADOWING, State.VALIDATING, State.ROLLED_BACK)


def can_move(current: str, new: str) -> bool:
    """Whether a migration in ``current`` may move to ``new`` (staying is always allowed)."""
    if new == current:
        return True
    try:
        return State(new) in TRANSITIONS[State(current)]
    except ValueError:  # not a state at all
        return False
