"""Typed errors. The library raises these; the CLI turns them into one clean line
and the matching exit code, so scripts calling the Python API can branch on type."""

from __future__ import annotations

from reshard.exit_codes import ExitCode


class ReshardError(Exception):
    """Base class: a failure reshard understands and can explain."""

    exit_code: ExitCode = ExitCode.ERROR


class ConfigError(ReshardError):
    """reshard.yaml, a shard map or a command-line value is invalid."""

    exit_code = ExitCode.BAD_INPUT


class MigrationError(ReshardError):
    """The migration named does not exist or is in a state that forbids the step."""

    exit_code = ExitCode.BAD_INPUT


class Unavailable(ReshardError):
    """A server reshard needs (a cluster, Kafka, Connect) cannot be reached or is unhealthy."""

    exit_code = ExitCode.UNAVAILABLE


class StackError(Unavailable):
    """The embedded stack could not be brought up, or a part of it died."""


class SetupError(ReshardError):
    """A check before the migration creates anything failed: a missing table, no
    primary key, source and target columns that differ, rows already on a target."""

    exit_code = ExitCode.BAD_INPUT


class SchemaMismatch(ReshardError):
    """Source and target tables disagree (columns, types, primary key), or the source
    changed under a running migration. The migration pauses; nothing is written."""

    exit_code = ExitCode.PAUSED


class MigrationPaused(ReshardError):
    """The applier met input it will not guess about and stopped before writing it."""

    exit_code = ExitCode.PAUSED


class WaitTimeout(ReshardError):
    """A bounded wait (catch-up, readiness) ran out."""

    exit_code = ExitCode.TIMEOUT


class BudgetExceeded(ReshardError):
    """The write pause would exceed its budget: the cutover backs out instead."""

    exit_code = ExitCode.CUTOVER_ABORTED


class SwitchIncomplete(ReshardError):
    """A switch past its point of no return could not finish: only going forward is safe
    now, and rerunning the same command does it (its recovery finishes the attempt)."""

    exit_code = ExitCode.SWITCH_INCOMPLETE


class StreamLost(ReshardError):
    """A stream's slot is gone or was made anew after a failover: the changes in between are
    not in it, so nothing can prove catch-up through it."""

    exit_code = ExitCode.STREAM_LOST


class Busy(ReshardError):
    """Another reshard process holds the migration's lease; nothing was done."""

    exit_code = ExitCode.BUSY


class LeaseLost(ReshardError):
    """This process lost the migration's lease mid-command: it stops before acting again."""

    exit_code = ExitCode.BUSY
