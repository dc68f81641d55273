"""Commands that steer a running migration: `pause`, `resume`, `throttle` (reshard/live_control.py)."""

from __future__ import annotations

from collections.abc import Callable

import click

from reshard.cli.context import Ctx, Duration, Size, emit, json_option
from reshard.cli.root import cli

PARTS = ("copy", "apply", "complete")


def _parts_options(f: Callable) -> Callable:
    for part, what in (("complete", "`complete`'s deletes of moved rows from the sources, between batches"),
                       ("apply", "the applier workers: they stop fetching, keep their heartbeats"),
                       ("copy", "the snapshot copy of `start`: its sessions hold their snapshot meanwhile")):
        f = click.option(f"--{part}", is_flag=True, help=f"Only {what}.")(f)
    return f


def _steer(ctx: Ctx, command: str, name: str, chosen: list[str], state: str) -> None:
    from reshard.control.store import ControlStore

    store = ControlStore(ctx.config().control_dsn)
    store.migration(name)  # an unknown name is a clear error
    parts = chosen or list(PARTS)
    control = store.set_control(name, f"control.{command}", **{p: state for p in parts})
    doc = {"command": command, "migration": name, "parts": parts, "control": control}
    emit(ctx, doc, lambda: f"{name}: {', '.join(parts)} {state}; running processes obey within 2 s")


@cli.command()
@click.argument("name")
@_parts_options
@json_option
@click.pass_obj
def pause(ctx: Ctx, name: str, copy: bool, apply: bool, complete: bool) -> None:
    """Pause the work of migration NAME where it stands: the copy, the appliers and `complete`
    (all three unless some are named). Running processes obey within 2 s and lose nothing
    (work stops between units that commit with their positions); a process started while
    paused waits. The slots keep WAL meanwhile: watch `reshard status`. Undo with `reshard resume`.
    """
    _steer(ctx, "pause", name, [p for p, on in zip(PARTS, (copy, apply, complete), strict=True) if on], "paused")


@cli.command()
@click.argument("name")
@_parts_options
@json_option
@click.pass_obj
def resume(ctx: Ctx, name: str, copy: bool, apply: bool, complete: bool) -> None:
    """Resume what `reshard pause` paused on migration NAME (all three parts unless some are named)."""
    _steer(ctx, "resume", name, [p for p, on in zip(PARTS, (copy, apply, complete), strict=True) if on], "running")


@cli.command()
@click.argument("name")
@click.option("--max-rows-per-second", type=click.FloatRange(min=1), default=None,
              help="Cap the copy (per source) and `complete`'s deletes at this many rows/s.")
@click.option("--max-bytes-per-second", type=click.FloatRange(min=1024), default=None,
              help="Cap the copy at this many bytes/s of COPY data per source.")
@click.option("--max-slot-wal", type=Size(), default=None,
              help="The WAL budget of the stream's slot during the copy (see `start --max-slot-wal`).")
@click.option("--max-latency-impact", type=Duration(per="ms", min=1), default=None,
              help="The adaptive throttle's latency budget (see `start --max-latency-impact`).")
@click.option("--adaptive/--no-adaptive", default=None,
              help="Turn the copy's adaptive throttle (it slows while the source suffers) on or off.")
@click.option("--clear", is_flag=True, help="Forget every live limit: back to what `start` was given.")
@json_option
@click.pass_obj
def throttle(ctx: Ctx, name: str, max_rows_per_second: float | None, max_bytes_per_second: float | None,
             max_slot_wal: int | None, max_latency_impact: int | None, adaptive: bool | None, clear: bool) -> None:
    """Change how fast migration NAME copies and deletes while it runs. The running copy and
    `complete` obey within 2 s; the limit in force and why show in `reshard status`."""
    from reshard.control.store import ControlStore
    from reshard.errors import ConfigError

    given = {k: v for k, v in (("max_rows_per_second", max_rows_per_second),
                                ("max_bytes_per_second", max_bytes_per_second),
                                ("max_slot_wal_bytes", max_slot_wal),
                                ("max_latency_impact_ms", max_latency_impact), ("adaptive", adaptive))
             if v is not None}
    if not given and not clear:
        raise ConfigError("say what to change: --max-rows-per-second, --max-bytes-per-second, --max-slot-wal, "
                          "--max-latency-impact, --adaptive, --no-adaptive or --clear")
    store = ControlStore(ctx.config().control_dsn)
    store.migration(name)
    now = {} if clear else {**(store.migration(name).settings.get("control") or {}).get("throttle", {}), **given}
    control = store.set_control(name, "control.throttle", throttle=now)
    doc = {"command": "throttle", "migration": name, "control": control}
    emit(ctx, doc, lambda: f"{name}: throttle now {now or 'as started'}; running processes obey within 2 s")
