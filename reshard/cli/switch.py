"""Commands that move ownership: `cutover`, `rollback`, `complete`, `abort`."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from reshard.cli.context import Ctx, Duration, confirm, emit, json_option
from reshard.cli.root import cli
from reshard.config import Config
from reshard.exit_codes import ExitCode


def _switch_options(max_lag: int, max_lag_bytes: int, max_write_pause: float, lock_timeout: int,
                    dry_run: bool, **kw):
    from reshard.cutover.orchestrator import SwitchOptions
    from reshard.errors import ConfigError

    if max_write_pause <= 0.2:
        raise ConfigError("--max-write-pause must be more than 0.2 s")
    return SwitchOptions(max_lag=max_lag, max_lag_bytes=max_lag_bytes, max_write_pause=max_write_pause,
                         lock_timeout_ms=lock_timeout, dry_run=dry_run, **kw)


def _reconcile_rules(config, store, name: str, path: str | None, dry_run: bool) -> list[dict] | None:
    """--reconcile's checks, compiled on every cluster (kept with the migration unless a dry
    run); None without it: the migration's stored checks run."""
    from reshard.proof.reconcile import adopt

    return adopt(config, store, name, path, keep=not dry_run) if path else None


def _switch_human(r: dict) -> str:
    lines = [f"{r['kind']} of {r['migration']}: {r['outcome'].replace('_', ' ')}" +
             (f" (wave {r['wave']})" if r.get("wave") else "")]
    for note in r.get("recovered", []):
        lines.append(f"  recovered: {note}")
    if r.get("keys"):
        lines.append(f"  keys: {r['keys']}")
    for gt in r.get("gates", []):
        lines.append(f"  gate {gt['gate']:<9} {'ok  ' if gt['ok'] else 'FAIL'} {gt['detail']}")
    for i, sentence in enumerate(r.get("plan", []), 1):
        lines.append(f"  {i:>2}. {sentence}")
    if r.get("outcome") != "dry_run":
        for c in r.get("reconciliation", []):
            lines.append(f"  reconcile {c['check']} on {c['table']} ({c['source']} -> {c['target']}): "
                         + (f"agrees ({c['groups']} group(s), {c['ms']:.0f} ms)" if c["ok"] else
                            f"DIFFERS in {len(c['differences'])} group(s), e.g. {c['differences'][0]}"))
    if r["outcome"] == "done" and r.get("pause_ms") is not None:
        lines.append(f"  write pause {r['pause_ms']:.0f} ms (drain {r['drain_ms']:.0f} ms), epoch {r['epoch']} active")
        lines.append("  steps: " + ", ".join(f"{st['step']} {st['ms']:.0f} ms" for st in r["steps"]))
    if r.get("message") and r["outcome"] != "done":
        lines.append(f"  {r['message']}")
    return "\n".join(lines)


def _switch_flags(f: Callable) -> Callable:
    f = click.option("--dry-run", is_flag=True,
                     help="Print the exact steps with today's positions and gate values; change nothing.")(f)
    f = click.option("--reconcile", "reconcile_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML file of reconciliation checks (named SQL aggregates per table, e.g. sum(amount) "
                          "per currency) that must agree between the sources' moving rows and the targets at the "
                          "fence; a disagreement backs out (exit 13). Kept with the migration for its later waves "
                          "and rollback; without it, the checks given before (to start or an earlier switch) run.")(f)
    f = click.option("--lock-timeout", type=Duration(per="ms"), default=500, show_default=True,
                     help="How long a fence change may wait for writes in progress before backing out "
                          "(500ms, 1s; a plain number is milliseconds).")(f)
    f = click.option("--max-write-pause", type=Duration(), default=2.0, show_default=True,
                     help="Hard budget in seconds for the write pause up to the targets' flip (the point of "
                          "no return); past it the switch backs out.")(f)
    f = click.option("--max-lag-bytes", default=64 << 20, show_default=True,
                     help="Gate: WAL bytes not yet confirmed by Debezium, at most.")(f)
    f = click.option("--max-lag", default=1000, show_default=True,
                     help="Gate: Kafka records not yet applied, at most.")(f)
    return f


@cli.command("cutover")
@click.argument("name")
@_switch_flags
@click.option("--only", default=None,
              help="Canary wave: a fraction (0.1 or 10%), bucket ranges (0-511) or move ids of the keys to cut now.")
@click.option("--sequence-gap", default=1, show_default=True,
              help="Set target sequences this far past the sources'.")
@click.option("--skip-verify-gate", is_flag=True, help="Do not require the last `reshard verify` to have passed.")
@click.option("--window", default=None, metavar="HH:MM-HH:MM",
              help="Only act inside this daily window (exit 11 outside it, having done nothing).")
@click.option("--timezone", default="local", show_default=True, help="Time zone of --window (e.g. UTC).")
@click.option("--wait-for-gates", type=Duration(allow_zero=True), default=0.0, show_default=True,
              help="Wait up to this long (and within --window) for the gates to pass before giving up.")
@click.option("--bake", "bake_for", type=Duration(), default=None,
              help="After the last wave, watch rollback triggers this long (e.g. 30m, 90s) and roll back by "
                   "itself on the first that fires (exit 14); see the Bake section of docs/cutover.md.")
@click.option("--bake-check", "bake_checks", multiple=True, metavar="COMMAND",
              help="--bake: a command run at every look; exit 0 is healthy, anything else (or a timeout) rolls back.")
@click.option("--prometheus", "prometheus_url", default=None, metavar="URL",
              help="--bake: the Prometheus that --bake-query asks (e.g. http://127.0.0.1:9090).")
@click.option("--bake-query", "bake_queries", multiple=True, metavar="PROMQL",
              help="--bake: a PromQL query asked at every look; a non-zero value rolls back.")
@click.option("--bake-interval", type=Duration(min=0.5), default=2.0, show_default=True,
              help="--bake: seconds between two looks at the triggers.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="--bake: the routers' error rate (errors per operation over 15 s) that rolls back.")
@click.option("--max-fence-rejections", type=click.IntRange(min=0), default=1000, show_default=True,
              help="--bake: fence rejections the routers may meet during the bake before it rolls back.")
@click.option("--max-reverse-lag", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="--bake: reverse-stream Kafka records not yet applied to the sources that roll back.")
@click.option("--bake-reconcile-every", type=Duration(), default=None,
              help="--bake: compare the migration's reconciliation checks (--reconcile) at a consistent point this "
                   "often, each time in a write pause backed out on purpose (a disagreement rolls back). With "
                   "checks, one such comparison always ends the bake before it is called clean.")
@click.option("--complete-after-bake", is_flag=True, help="--bake: run `reshard complete` after a clean bake.")
@json_option
@click.pass_obj
def cutover_cmd(ctx: Ctx, name: str, max_lag: int, max_lag_bytes: int, max_write_pause: float, lock_timeout: int,
                dry_run: bool, reconcile_path: str | None, only: str | None, sequence_gap: int, skip_verify_gate: bool, window: str | None,
                timezone: str, wait_for_gates: float, bake_for: float | None, bake_checks: tuple[str, ...],
                prometheus_url: str | None, bake_queries: tuple[str, ...], bake_interval: float,
                max_error_rate: float, max_fence_rejections: int, max_reverse_lag: int,
                bake_reconcile_every: float | None, complete_after_bake: bool) -> None:
    """Cut migration NAME over: fence, drain, flip routing, start reverse replication.

    \b
    Gates first (nothing is fenced if one fails; exit 20-23 says which):
      lag under --max-lag, last verification passed, reverse replication possible,
      an applier running. Then, within --max-write-pause: fence the moving keys on the
    sources (writes in progress are waited out), drain every change before the fence,
    bring sequences past, flip the fences, activate the new map epoch (routers are
    notified). Reverse replication then keeps `reshard rollback` possible. Past the
    budget it backs out (exit 12): sources accept writes again, routing unchanged.
    The point of no return is the targets' flip: from there it only goes forward, even
    past the budget (a frozen process finishes when it thaws; exit 15 if it cannot, and
    a rerun finishes it). Rerunning after a crash finishes or backs out the
    interrupted attempt first.

    With --bake, after the last wave it keeps watching rollback triggers (the routers'
    error rate and fence rejections, shadow and continuous-check mismatches, reverse
    lag, --bake-check commands, --bake-query Prometheus queries, the reconciliation
    checks at a consistent point) and rolls back by itself on the first that fires
    (exit 14), within the same write-pause budget; a clean bake exits 0, and
    --complete-after-bake then completes the migration.
    """
    from reshard.coordinator import Coordinator
    from reshard.cutover.orchestrator import Outcome
    from reshard.cutover.schedule import parse_window

    bake = _bake_options(bake_for, only, dry_run, bake_interval, max_error_rate, max_fence_rejections, max_reverse_lag,
                         bake_checks, prometheus_url, bake_queries, complete_after_bake, bake_reconcile_every)
    config = ctx.config()
    win = parse_window(window, timezone) if window else None
    if win is not None and not win.contains():
        doc = {"command": "cutover", "migration": name, "outcome": "outside_window", "window": str(win),
               "exit_code": int(ExitCode.OUTSIDE_WINDOW)}
        emit(ctx, doc, lambda: f"{name}: now is outside the window {win}; nothing done")
        sys.exit(ExitCode.OUTSIDE_WINDOW)
    progress = ctx.progress()
    co = Coordinator.open(config, progress)
    opts = _switch_options(max_lag, max_lag_bytes, max_write_pause, lock_timeout, dry_run, only=only,
                           sequence_gap=sequence_gap, require_verified=not skip_verify_gate,
                           reconcile=_reconcile_rules(config, co.store, name, reconcile_path, dry_run))
    try:
        if wait_for_gates > 0 and not dry_run:
            _exit_unless_gates_met(ctx, name, co.wait_for_gates(name, opts, wait_for_gates, win), wait_for_gates)
        result = co.cutover(name, opts)
        baked = None
        if bake is not None and result.outcome == Outcome.DONE:
            baked = _bake(config, name, bake, opts, progress)
    finally:
        progress.stop()
    doc = {"command": "cutover", **result.to_dict(), **({"bake": baked.to_dict()} if baked else {})}
    emit(ctx, doc, lambda: _switch_human(doc) + (f"\nbake: {baked.message}" if baked else ""))
    sys.exit(baked.exit_code if baked else result.exit_code)


def _bake_options(bake_for: float | None, only: str | None, dry_run: bool, interval: float, max_error_rate: float,
                  max_fence_rejections: int, max_reverse_lag: int, checks: tuple[str, ...], prometheus_url: str | None,
                  queries: tuple[str, ...], complete_after: bool, reconcile_every: float | None) -> Any:
    """cutover's --bake flags as BakeOptions (None without --bake); UsageError when they do not fit."""
    if bake_for is None:
        if complete_after or checks or queries or reconcile_every:
            raise click.UsageError("--complete-after-bake, --bake-check, --bake-query and --bake-reconcile-every "
                                   "need --bake DURATION")
        return None
    if only is not None or dry_run:
        raise click.UsageError("--bake follows the last wave of a real cutover: not with --only or --dry-run")
    if queries and not prometheus_url:
        raise click.UsageError("--bake-query needs --prometheus URL")
    from reshard.cutover.bake import BakeOptions

    return BakeOptions(bake_for, interval, max_error_rate=max_error_rate, max_fence_rejections=max_fence_rejections,
                       max_reverse_lag=max_reverse_lag, checks=list(checks), prometheus_url=prometheus_url,
                       queries=list(queries), complete_after=complete_after, reconcile_every=reconcile_every)


def _exit_unless_gates_met(ctx: Ctx, name: str, gates: list, waited: float) -> None:
    """--wait-for-gates ran out: say which gates failed, exit with the first one's code."""
    from reshard.cutover.orchestrator import Outcome

    failed = [gt for gt in gates if not gt.ok]
    if not failed:
        return
    doc = {"command": "cutover", "migration": name, "outcome": Outcome.GATES,
           "gates": [gt.to_dict() for gt in gates], "exit_code": int(failed[0].code)}
    emit(ctx, doc, lambda: f"{name}: gates not met after {waited:.0f}s: "
         + "; ".join(f"{gt.name}: {gt.detail}" for gt in failed))
    sys.exit(failed[0].code)


def _bake(config: Config, name: str, bake, opts, progress):

    from reshard.coordinator import Coordinator
    from reshard.cutover.bake import Baker

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    co = Coordinator.open(config, progress)
    return Baker(co, name, bake, opts, say=progress.step, stop=stop).run()


@cli.command("rollback")
@click.argument("name")
@_switch_flags
@json_option
@click.pass_obj
def rollback_cmd(ctx: Ctx, name: str, max_lag: int, max_lag_bytes: int, max_write_pause: float, lock_timeout: int,
                 dry_run: bool, reconcile_path: str | None) -> None:
    """Move every cut-over key of NAME back to its source: the cutover in reverse.

    Fence the keys on the targets, drain the reverse stream, flip routing back, and let
    the sources accept them again; writes made on the targets meanwhile are on the
    sources. Possible until `reshard complete`. The forward stream keeps running, so a
    later `reshard cutover` can try again. Same budget and exit codes as cutover.
    """
    from reshard.coordinator import Coordinator

    config = ctx.config()
    progress = ctx.progress()
    co = Coordinator.open(config, progress)
    opts = _switch_options(max_lag, max_lag_bytes, max_write_pause, lock_timeout, dry_run, require_verified=False,
                           reconcile=_reconcile_rules(config, co.store, name, reconcile_path, dry_run))
    try:
        result = co.rollback(name, opts)
    finally:
        progress.stop()
    doc = {"command": "rollback", **result.to_dict()}
    emit(ctx, doc, lambda: _switch_human(doc))
    sys.exit(result.exit_code)


@cli.command("complete")
@click.argument("name")
@click.option("--keep-source-data", is_flag=True, help="Do not delete the moved rows from the sources.")
@click.option("--drop-fences", is_flag=True,
              help="Remove reshard's fence triggers too (stale routers could then write to old owners).")
@click.option("--batch-rows", default=5000, show_default=True, help="Rows deleted per source transaction.")
@click.option("--batch-pause", "--throttle", "throttle", type=Duration(), default=0.05, show_default=True,
              help="Pause between delete batches (50ms, 1s; --throttle: its former name). `reshard throttle "
                   "--max-rows-per-second` caps them while they run.")
@click.option("--adaptive/--no-adaptive", default=True, show_default=True,
              help="Pace the deletes as the copy is paced: slower while a probe of the source says the "
                   "application suffers (`reshard status` and the progress say the limit and why).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def complete_cmd(ctx: Ctx, name: str, keep_source_data: bool, drop_fences: bool, batch_rows: int, throttle: float,
                 adaptive: bool, yes: bool) -> None:
    """The point of no return: stop reverse and forward replication, drop what reshard
    created, delete the moved rows from the sources in throttled batches.

    Every step is recorded and idempotent: rerun it after a crash. Rollback is no
    longer possible afterwards. Fences stay, enforcing the final map, unless --drop-fences.
    """
    from reshard.coordinator import Coordinator

    confirm(yes, f"Complete migration {name}? Rollback will no longer be possible"
             + ("." if keep_source_data else " and the moved rows will be deleted from the sources."))
    config = ctx.config()
    progress = ctx.progress()
    try:
        result = Coordinator.open(config, progress).complete(name, keep_source_data=keep_source_data,
                                                            drop_fences=drop_fences, batch_rows=batch_rows,
                                                            pause_s=throttle, adaptive=adaptive)
    finally:
        progress.stop()
    doc = {"command": "complete", **result.to_dict()}
    emit(ctx, doc, lambda: f"{name}: complete ({result.deleted_rows:,} moved rows deleted from the sources)"
         + (" - resumed" if result.resumed else ""))


@cli.command("abort")
@click.argument("name")
@click.option("--keep-target-data", is_flag=True, help="Leave the rows already copied on the targets.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def abort_cmd(ctx: Ctx, name: str, keep_target_data: bool, yes: bool) -> None:
    """Stop migration NAME before cutover and drop what it created.

    Deletes its connectors, slots, publications and topics, and the rows it copied to the
    targets; the sources keep every row. Refused once a wave is cut over (roll back first).
    """
    from reshard.coordinator import Coordinator

    confirm(yes, f"Abort migration {name} and drop what it created"
             + ("?" if keep_target_data else ", including the rows copied to the targets?"))
    done = Coordinator.open(ctx.config()).teardown(name, drop_target_rows=not keep_target_data)
    emit(ctx, {"command": "abort", "migration": name, "actions": done},
         lambda: f"{name}: aborted\n" + "\n".join(f"  {a}" for a in done))
