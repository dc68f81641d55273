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

TRANSITIONS: dict[str, set[str]] = {
    PLANNED: {BUILDING, ABORTED},
    BUILDING: {STREAMING, ABORTED},
    STREAMING: {SHADOWING, VALIDATING, SWITCHING, ABORTED},
    SHADOWING: {STREAMING, VALIDATING, SWITCHING, ABORTED},
    VALIDATING: {STREAMING, SHADOWING, ROLLED_BACK, SWITCHING, ABORTED},
    SWITCHING: {STREAMING, SHADOWING, BAKING, ROLLED_BACK},  # where the attempt (or its back-out) leaves it
    BAKING: {SWITCHING, FINALIZING},
    ROLLED_BACK: {SHADOWING, VALIDATING, SWITCHING, ABORTED},
    FINALIZING: {COMPLETE},
    COMPLETE: set(),
    ABORTED: set(),
}

ALL = tuple(TRANSITIONS)
# may still create, copy or stream rows
LIVE = (PLANNED, BUILDING, STREAMING, SHADOWING, VALIDATING, SWITCHING, BAKING, ROLLED_BACK, FINALIZING)
# changes stream (forward, and after a cutover in reverse): catch-up, verify and the applier work
FLOWING = (STREAMING, SHADOWING, VALIDATING, SWITCHING, BAKING, ROLLED_BACK)
# a cutover may start from these
SWITCHABLE = (STREAMING, SHADOWING, VALIDATING, ROLLED_BACK)
# shadow reads run in these (before the keys' cutover; after it, hedged reads may go back)
SHADOWABLE = (STREAMING, SHADOWING, VALIDATING, ROLLED_BACK)


def can_move(current: str, new: str) -> bool:
    return new == current or new in TRANSITIONS.get(current, set())
