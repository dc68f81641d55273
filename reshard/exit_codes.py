"""Every exit code reshard uses, in one place.

Scheduled jobs branch on these, so they are part of the interface: documented in
docs/reference/commands.md and at the end of ``reshard --help``, and never reused for another
meaning. As in dbt, "the command ran and the answer is negative" (1) is distinct
from "the command could not do its job" (2 and up).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    CHECK_FAILED = 1
    ERROR = 2
    BAD_INPUT = 3
    UNAVAILABLE = 4
    PAUSED = 5
    TIMEOUT = 6
    BUSY = 7
    OUTSIDE_WINDOW = 11
    CUTOVER_ABORTED = 12
    RECONCILE_FAILED = 13
    BAKE_ROLLED_BACK = 14
    SWITCH_INCOMPLETE = 15
    STREAM_LOST = 16
    GATE_LAG = 20
    GATE_UNVERIFIED = 21
    GATE_REVERSE = 22
    GATE_APPLIER = 23


DESCRIPTIONS: dict[ExitCode, str] = {
    ExitCode.OK: "the command did what was asked",
    ExitCode.CHECK_FAILED: "it ran to the end and the answer is negative (verify found differences)",
    ExitCode.ERROR: "unexpected internal error; the message and the logs say what happened",
    ExitCode.BAD_INPUT: "bad command line, config, shard map or migration; nothing was changed",
    ExitCode.UNAVAILABLE: "a cluster, Kafka, Kafka Connect or the embedded stack is unreachable or unhealthy",
    ExitCode.PAUSED: "the migration stopped itself on input it will not guess about "
    "(schema drift, a row missing for a partial update); nothing was lost: fix it and rerun",
    ExitCode.TIMEOUT: "a bounded wait ran out (e.g. catch-up did not finish within --timeout)",
    ExitCode.BUSY: "another reshard process holds the migration's lease (start, cutover, rollback, complete "
    "or abort is running); nothing was done, or this process lost the lease and stopped",
    ExitCode.OUTSIDE_WINDOW: "cutover --window: now is outside the window; nothing was checked or changed",
    ExitCode.CUTOVER_ABORTED: "the cutover (or rollback) aborted, e.g. past --max-write-pause; routing is "
    "unchanged, writes are accepted where they were, streams keep running",
    ExitCode.RECONCILE_FAILED: "the cutover (or rollback) backed out because a reconciliation check (--reconcile) "
    "disagreed between the sources' moving rows and the targets at the fence; routing is unchanged",
    ExitCode.BAKE_ROLLED_BACK: "cutover --bake: a rollback trigger fired during the bake and the migration was "
    "rolled back (the trigger and its evidence are in the output and the events)",
    ExitCode.SWITCH_INCOMPLETE: "the cutover (or rollback) passed its point of no return (a target's flip) and "
    "could not finish (a cluster or the control database unreachable): the moving keys are refused until the "
    "same command is run again, which finishes it forward; nothing acknowledged is lost",
    ExitCode.STREAM_LOST: "a stream's replication slot was lost (a source failed over on PostgreSQL 15/16, or to a "
    "standby that had not synchronized the slot): catch-up cannot be proven and no cutover runs; the source "
    "failover runbook says the way on",
    ExitCode.GATE_LAG: "gate failed: replication lag above --max-lag; nothing was fenced",
    ExitCode.GATE_UNVERIFIED: "gate failed: the last `reshard verify` did not pass (or none ran); nothing was fenced",
    ExitCode.GATE_REVERSE: "gate failed: reverse replication cannot be set up on a target; nothing was fenced",
    ExitCode.GATE_APPLIER: "gate failed: no applier worker is running for the migration; nothing was fenced",
}


def describe() -> str:
    """The table printed at the end of ``reshard --help`` and in docs/reference/commands.md."""
    return "\n".join(f"{int(c):>3}  {c.name.lower():<13} {DESCRIPTIONS[c]}" for c in ExitCode)
