"""Commands about shard maps: `map`, `plan`, `check` (before a migration), and the shard-side `fence`."""

from __future__ import annotations

import sys

import click

from reshard.cli.context import Ctx, Duration, _size, confirm, emit, json_option
from reshard.cli.root import cli
from reshard.errors import ConfigError
from reshard.exit_codes import ExitCode
from reshard.preflight import CHECKS as CHECK_NAMES


@cli.group("map")
def map_group() -> None:
    """Shard-map versions in the control database, each with a monotonically increasing epoch."""


@map_group.command("register")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--note", default="", help="A note stored with the version (shown by `map history`).")
@click.option("--initial", is_flag=True, help="Also make it the active map; only when none is active yet.")
@json_option
@click.pass_obj
def map_register(ctx: Ctx, path: str, note: str, initial: bool) -> None:
    """Validate the map in PATH and store it as a new version (epoch).

    Registering switches no traffic: a migration's cutover does that. The very first
    map of a fleet, which only states where keys are today, is activated with --initial.
    Registering the newest version's exact content again returns its epoch.
    """
    from reshard.coordinator import Coordinator
    from reshard.maps.shardmap import load_map

    config = ctx.config()
    m = load_map(path, config.clusters)
    epoch, created, activated = Coordinator.open(config).register_map(m, note, initial)
    emit(ctx, {"command": "map register", "epoch": epoch, "created": created, "activated": activated,
               "digest": m.digest()},
         lambda: f"map {'registered' if created else 'already registered'} as epoch {epoch}"
         + (" and activated" if activated else " (not active: a cutover activates it)"))


@map_group.command("show")
@click.argument("epoch", type=int, required=False)
@json_option
@click.pass_obj
def map_show(ctx: Ctx, epoch: int | None) -> None:
    """Print a map version as YAML (default: the active one)."""
    import yaml

    from reshard.control.store import ControlStore
    from reshard.errors import ConfigError

    store = ControlStore(ctx.config().control_dsn)
    active = store.active_epoch()
    if epoch is None:
        if active is None:
            raise ConfigError("no active map; give an epoch (see `reshard map history`)")
        epoch = active
    m = store.get_map(epoch)
    emit(ctx, {"command": "map show", "epoch": epoch, "active": epoch == active, "map": m.to_dict()},
         lambda: f"# epoch {epoch}{' (active)' if epoch == active else ''}, digest {m.digest()}\n"
         + yaml.safe_dump(m.to_dict(), sort_keys=False))


@map_group.command("history")
@json_option
@click.pass_obj
def map_history(ctx: Ctx) -> None:
    """Every registered map version, oldest first, with the active one marked."""
    from reshard.control.store import ControlStore

    rows = ControlStore(ctx.config().control_dsn).map_history()
    emit(ctx, {"command": "map history", "versions": rows}, lambda: "\n".join(
        f"{'*' if r['active'] else ' '} epoch {r['epoch']:<4} {r['registered_at']:%Y-%m-%d %H:%M:%S}  "
        f"{r['digest']}  {r['name'] or '-'}  {r['note']}" for r in rows) or "no maps registered")


@cli.command("plan")
@click.option("--to", "to_path", required=True, type=click.Path(dir_okay=False), help="The new shard map (YAML).")
@click.option("--from", "from_path", type=click.Path(dir_okay=False), help="Today's map (default: the active one).")
@click.option("--estimates/--no-estimates", default=True, show_default=True,
              help="Estimate rows and bytes from each source's statistics (needs the clusters reachable).")
@click.option("--sql", "show_sql", is_flag=True, help="Print each move's key predicate in SQL.")
@json_option
@click.pass_obj
def plan_cmd(ctx: Ctx, to_path: str, from_path: str | None, estimates: bool, show_sql: bool) -> None:
    """List the moves from today's map to a new one, with estimated rows, bytes and share.

    Each move is (source cluster, target cluster, keys); --sql shows the predicate
    that selects them. Nothing is written anywhere.
    """
    from reshard.coordinator import Coordinator
    from reshard.maps.estimate import estimate_plan
    from reshard.maps.planner import plan
    from reshard.maps.shardmap import load_map

    config = ctx.config()
    new = load_map(to_path, config.clusters)
    if from_path is None:
        from_epoch, old = Coordinator.open(config).current_map()
    else:
        from_epoch, old = None, load_map(from_path, config.clusters)
    p = plan(old, new)
    est = estimate_plan(config, p) if estimates and p.moves else None
    doc = {"command": "plan", "from_epoch": from_epoch, "moves": [m.to_dict() for m in p.moves],
           "estimate": est.to_dict() if est else None}
    if not est:
        doc["predicates"] = {m.id: {t: p.predicate_sql(m, t).as_string(None) for t in sorted(p.new.groups[m.group].tables)}
                             for m in p.moves}
    emit(ctx, doc, lambda: _plan_human(p, est, from_epoch, show_sql))


def _plan_human(p, est, from_epoch, show_sql: bool) -> str:
    if not p.moves:
        return "nothing moves: the maps place every key alike"
    head = f"from {'epoch ' + str(from_epoch) if from_epoch else 'the given map'} to the new map: {len(p.moves)} move(s)"
    lines = [head]
    if est is None:
        for m in p.moves:
            lines.append(f"  {m.source:>10} -> {m.target:<10} {m.group}: {m.summary}")
            if show_sql:
                for t in sorted(p.new.groups[m.group].tables):
                    lines.append(f"      {t}: {p.predicate_sql(m, t).as_string(None)}")
        return "\n".join(lines)
    lines.append(f"  {'source':>10}    {'target':<10} {'table':<24} {'est. rows':>12} {'est. size':>11}  keys")
    for e in est.moves:
        lines.append(f"  {e.move.source:>10} -> {e.move.target:<10} {e.table:<24} {e.rows:>12,} "
                     f"{_size(e.bytes):>11}  {e.move.summary}")
        if show_sql:
            lines.append(f"      {e.predicate}")
    if est.fraction is not None and not est.unanalyzed:
        lines.append(f"moves {100 * est.fraction:.1f}% of the data: {_size(est.moving_bytes)} of "
                     f"{_size(est.total_bytes)}, {est.moving_rows:,} of {est.total_rows:,} rows")
    elif est.fraction is not None:
        lines.append(f"moves about {100 * est.fraction:.1f}% of the rows ({est.moving_rows:,} of {est.total_rows:,}, "
                     "guessed from table sizes)")
    if est.unanalyzed:
        lines.append(f"statistics missing for {', '.join(est.unanalyzed)} (never analyzed): rows are guessed from its "
                     "size and bytes are unknown; run ANALYZE on it for a real estimate")
    if est.missing:
        lines.append(f"no statistics for: {', '.join(est.missing)} (table missing there)")
    return "\n".join(lines)


@cli.group("fence")
def fence_group() -> None:
    """The shard-side fence: a trigger on every sharded table that rejects writes to keys
    the shard does not own at its epoch (SQLSTATE RS002) or that are switching (RS001)."""


@fence_group.command("install")
@click.option("--epoch", type=int, help="Fence for this map version (default: the active one).")
@click.option("--lock-timeout", type=Duration(per="ms"), default=2000, show_default=True,
              help="How long to wait for writes in progress on a table before giving up unchanged (2s, 500ms; "
                   "a plain number is milliseconds).")
@json_option
@click.pass_obj
def fence_install(ctx: Ctx, epoch: int | None, lock_timeout: int) -> None:
    """Install (or refresh) the fence of a map version on every cluster in reshard.yaml.

    Idempotent. Each cluster's change waits for writes in progress, then applies atomically.
    """
    from reshard.cluster import fence
    from reshard.control.store import ControlStore
    from reshard.errors import ConfigError

    config = ctx.config()
    store = ControlStore(config.control_dsn)
    if epoch is None:
        active = store.active()
        if active is None:
            raise ConfigError("no active map: register one first (`reshard map register --initial`)")
        epoch, m = active
    else:
        m = store.get_map(epoch)
    done = fence.fence_map(config, epoch, m, lock_timeout)
    emit(ctx, {"command": "fence install", "epoch": epoch, "tables": done},
         lambda: "\n".join(f"{c}: fenced {', '.join(ts) or 'nothing (no sharded tables there)'} at epoch {epoch}"
                           for c, ts in done.items()))


@fence_group.command("remove")
@click.option("--lock-timeout", type=Duration(per="ms"), default=2000, show_default=True,
              help="How long to wait for writes in progress on a table before giving up unchanged (2s, 500ms; "
                   "a plain number is milliseconds).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def fence_remove(ctx: Ctx, lock_timeout: int, yes: bool) -> None:
    """Remove reshard's fence from every table that has one, on every cluster. Idempotent.
    Without the fence, a router with a stale map can write to a shard that no longer owns the key."""
    confirm(yes, "Remove the write fence from every table on every cluster (stale routers could then write "
                 "to old owners)?")
    from reshard.cluster import fence
    from reshard.cluster.session import connect

    config = ctx.config()
    done = {}
    for name, c in sorted(config.clusters.items()):
        with connect(c.dsn, f"cluster {name}", autocommit=True) as conn:
            tables = [s["table"] for s in fence.state(conn)]
            done[name] = fence.remove(conn, tables, lock_timeout) if tables else []
    emit(ctx, {"command": "fence remove", "tables": done},
         lambda: "\n".join(f"{c}: removed from {', '.join(ts) or 'nothing'}" for c, ts in done.items()))


@fence_group.command("status")
@json_option
@click.pass_obj
def fence_status(ctx: Ctx) -> None:
    """Per cluster and table: the fence's epoch, mode (steady, switching, fenced), and whether it is active."""
    from reshard.cluster import fence
    from reshard.cluster.session import connect

    config = ctx.config()
    out = {}
    for name, c in sorted(config.clusters.items()):
        with connect(c.dsn, f"cluster {name}") as conn:
            out[name] = fence.state(conn)
    emit(ctx, {"command": "fence status", "clusters": out}, lambda: "\n".join(
        f"{c}: " + (", ".join(f"{s['table']} epoch {s['epoch']} {s['mode']}{'' if s['active'] else ' (INACTIVE)'}"
                              for s in st) or "no fence") for c, st in out.items()))


@cli.command("check")
@click.option("--to", "to_path", required=True, type=click.Path(dir_okay=False), help="The new shard map (YAML).")
@click.option("--from", "from_path", type=click.Path(dir_okay=False), help="Today's map (default: the active one).")
@click.option("--skip-check", "skip", multiple=True, type=click.Choice(CHECK_NAMES),
              help="A check whose failure to accept (repeatable); `start --skip-check` takes the same names.")
@click.option("--estimates/--no-estimates", default=True, show_default=True,
              help="Measure the sources (a few seconds each) for the feasibility and skew reports.")
@json_option
@click.pass_obj
def check_cmd(ctx: Ctx, to_path: str, from_path: str | None, skip: tuple[str, ...], estimates: bool) -> None:
    """Check, before anything is created, that a migration to the new map will work here and how
    long it will take: services, each cluster (version, wal_level, free slots and WAL senders,
    the slot WAL limit, the role's rights, DDL capture), the moving tables, and the feasibility
    (copy time from a read rate measured now, WAL kept meanwhile, catch-up) and skew (rows,
    bytes and recent writes per destination) reports. Exit 1 when a check fails.
    """
    from reshard.control.store import ControlStore
    from reshard.coordinator import Coordinator
    from reshard.maps.planner import plan
    from reshard.maps.shardmap import load_map
    from reshard.preflight import run
    from reshard.snapshotter.throttle import ramp_seconds

    config = ctx.config()
    new = load_map(to_path, config.clusters)
    old = load_map(from_path, config.clusters) if from_path else Coordinator.open(config).current_map()[1]
    p = plan(old, new)
    if not p.moves:
        raise ConfigError("the new map moves no keys: nothing to check")
    result = run(config, ControlStore(config.control_dsn), p, full=estimates, copy_model=ramp_seconds)
    failed = result.failed(skip)
    doc = {"command": "check", **result.to_dict(), "ok": not failed, "skipped": list(skip)}
    emit(ctx, doc, lambda: _check_human(doc))
    if failed:
        sys.exit(ExitCode.CHECK_FAILED)


def _check_human(doc: dict) -> str:
    lines = []
    for c in doc["checks"]:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[c["result"]]
        lines.append(f"  {mark} {c['name']:<17} {c['cluster'] or '':<10} {c['detail']}")
    f = doc.get("feasibility") or {}
    for source, s in sorted((f.get("sources") or {}).items()):
        lines.append(f"  {source}: {s['moving_bytes'] / 1e6:,.1f} MB to copy at ~{(s['sample_read_bytes_per_s'] or 0) / 1e6:,.1f} "
                     f"MB/s (one session, measured now): ~{s['copy_seconds'] or 0:,.0f} s under the default throttle "
                     f"(~{s.get('copy_seconds_unthrottled') or 0:,.0f} s with --throttle off); WAL "
                     f"{s['wal_bytes_per_s'] / 1e3:,.1f} kB/s -> ~{(s['wal_kept_during_copy_bytes'] or 0) / 1e6:,.1f} MB "
                     "kept by its slot meanwhile")
    if f:
        lines.append(f"  catch-up: ~{f['catch_up_seconds'] or 0:,.0f} s at {f['apply_events_per_s']:,} events/s "
                     f"({f['apply_rate']}); verdict: {f['verdict']}")
    lines.append("all checks pass" if doc["ok"] else "checks FAILED: " + ", ".join(
        sorted({c["name"] for c in doc["checks"] if c["result"] == "fail" and c["name"] not in doc["skipped"]})))
    return "\n".join(lines)
