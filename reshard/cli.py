"""The `reshard` command: a thin layer over the library.

Each command parses its options, calls one library function, and prints the result:
for people on stderr/stdout, or with ``--json`` one versioned JSON document on stdout
and nothing else there. Progress goes to stderr. Typed errors become one line and
the exit code documented in reshard/exit_codes.py.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import click

from reshard import __version__
from reshard.config import Config, load_config, state_dir
from reshard.errors import ReshardError
from reshard.exit_codes import ExitCode, describe
from reshard.json_schemas import check_if_asked
from reshard.observe.logs import FORMATS, LEVELS
from reshard.observe.logs import configure as configure_logging
from reshard.observe.progress import Progress
from reshard.snapshotter.snapshot import DEFAULT_BATCH_ROWS

JSON_VERSION = 1


class Ctx:
    def __init__(self, config_path: str | None, progress_mode: str, log_format: str = "text"):
        self.config_path = config_path
        # with JSON logs, progress goes through the log too: stderr holds only JSON lines
        self.progress_mode = "log" if log_format == "json" and progress_mode != "off" else progress_mode
        self.json = False
        self.loaded: Config | None = None  # the config this command read: named in --json output and errors

    def config(self) -> Config:
        self.loaded = load_config(self.config_path)
        return self.loaded

    def config_used(self) -> dict[str, str] | None:
        if self.loaded is None or self.loaded.path is None:
            return None
        return {"path": str(self.loaded.path), "chosen_by": self.loaded.chosen_by}

    def progress(self) -> Progress:
        return Progress(self.progress_mode)


def _json_value(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, Decimal):
        return float(o)
    return str(o)


def envelope(doc: dict[str, Any]) -> dict[str, Any]:
    """Every --json document starts the same way: ``version`` (of this layout), ``command``,
    ``migration`` (null for commands about no single migration), ``generated_at`` (ISO 8601,
    UTC), and ``config_file`` (the reshard.yaml read and the rule that chose it, when
    the command read one); times inside are ISO 8601 too. Each command's document is
    described by schemas/cli/<command>.schema.json."""
    rest = {k: v for k, v in doc.items() if k not in ("version", "command", "migration", "config_file")}
    click_ctx = click.get_current_context(silent=True)
    obj = click_ctx.find_object(Ctx) if click_ctx is not None else None
    used = doc.get("config_file") or (obj.config_used() if obj is not None else None)
    return {"version": JSON_VERSION, "command": doc["command"], "migration": doc.get("migration"),
            "generated_at": datetime.now(UTC).isoformat(), **({"config_file": used} if used else {}),
            **rest}


def dumps(doc: dict[str, Any], indent: int | None = 2) -> str:
    text = json.dumps(envelope(doc), default=_json_value, indent=indent)
    check_if_asked(text)
    return text


def emit(ctx: Ctx, doc: dict[str, Any], human: Callable[[], str]) -> None:
    if ctx.json:
        click.echo(dumps(doc))
    else:
        click.echo(human())


def json_option(f: Callable) -> Callable:
    def cb(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        obj = ctx.find_object(Ctx)
        if value and obj is not None:
            obj.json = True
        return value

    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=cb,
                        help="Print one JSON document on stdout (for jobs); progress stays on stderr.")(f)


def interrupt_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, which ends a watch with exit 0.

    Set explicitly: a process started in the background by a shell without job control
    (a CI script, ``cmd &``) inherits SIGINT *ignored*, and Python then leaves it ignored,
    so a Ctrl-C (or a test's SIGINT) would never stop the watch."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)


EPILOG = "Exit codes:\n\n\b\n" + describe()


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="reshard")
@click.option("--config", "config_path", metavar="PATH", envvar="RESHARD_CONFIG",
              help="reshard.yaml to use. Without it: ./reshard.yaml in the working directory, then the embedded "
                   "stack's ($RESHARD_HOME/reshard.yaml, else ./.reshard/reshard.yaml); `reshard config` says "
                   "which one is read.")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "rich", "plain", "off"]), default="auto",
              show_default=True, help="Progress on stderr: live bars on a terminal, plain lines in logs, or none.")
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True, envvar="RESHARD_LOG_LEVEL",
              help="Log lines on stderr from this level up (reshard's own; other libraries: warnings and up).")
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
              envvar="RESHARD_LOG_FORMAT",
              help="text, or json: one object per line with migration, worker, stream and step fields (progress "
                   "then goes through the log too). Passwords and secrets are never written.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, progress_mode: str, log_level: str, log_format: str) -> None:
    """Online resharding for live PostgreSQL: snapshot, Debezium CDC over Kafka, idempotent apply.

    \b
    Quick start on this machine:
      reshard stack up        # PostgreSQL, Kafka, Kafka Connect + Debezium on loopback
      reshard demo            # a verified live migration, end to end
    \b
    A migration:
      reshard start NAME --to new-map.yaml [--from current-map.yaml]
      reshard apply NAME      # one applier worker; run more for more throughput
      reshard wait NAME       # returns once the targets hold every committed change
      reshard verify NAME
    """
    configure_logging(log_level, log_format)
    ctx.obj = Ctx(config_path, progress_mode, log_format)


@cli.command("config")
@json_option
@click.pass_obj
def config_cmd(ctx: Ctx) -> None:
    """Say which reshard.yaml is read, why, and whether it is valid (exit 3 if not).

    \b
    Precedence (the first that applies wins):
      1. --config PATH (or $RESHARD_CONFIG): that file and no other
      2. ./reshard.yaml in the working directory
      3. the embedded stack's: $RESHARD_HOME/reshard.yaml, else ./.reshard/reshard.yaml
    Schemas for editors: schemas/files/reshard.yaml.schema.json and shard-map.schema.json.
    """
    from reshard.config import PRECEDENCE

    config = ctx.config()
    doc = {"command": "config", "precedence": list(PRECEDENCE), "valid": True,
           "clusters": sorted(config.clusters), "kafka_format": config.kafka.format,
           "connect_url": config.connect.url}
    emit(ctx, doc, lambda: "\n".join([
        f"config      {config.path}", f"chosen by   {config.chosen_by}", "valid       yes",
        f"clusters    {', '.join(sorted(config.clusters))}", "precedence  (the first that applies wins)",
        *[f"  {i}. {rule}" for i, rule in enumerate(PRECEDENCE, 1)],
    ]))


# ---- stack ------------------------------------------------------------------------

@cli.group()
def stack() -> None:
    """The embedded stack: real PostgreSQL, Kafka, Kafka Connect and Debezium on 127.0.0.1.

    State, data and logs live in ./.reshard (or $RESHARD_HOME).
    """


def _stack(ctx: Ctx):
    from reshard.stack import Stack

    quiet = ctx.json or ctx.progress_mode == "off"
    return Stack(state_dir(), say=None if quiet else (lambda m: click.echo(f"==> {m}", err=True)))


@stack.command("up")
@click.option("--sources", default=1, show_default=True, help="Number of source clusters (source1..N).")
@click.option("--targets", default=2, show_default=True, help="Number of target clusters (target1..N).")
@click.option("--secure", is_flag=True,
              help="Create the stack secured as a production fleet is: TLS on the shard clusters (verify-full) "
                   "with SCRAM passwords, SASL_SSL/SCRAM-SHA-256 on Kafka, https and basic auth on Connect's REST "
                   "API. Certificates and passwords are generated under the state directory (tls/, secrets/). "
                   "Chosen when the stack is created; later runs keep it.")
@json_option
@click.pass_obj
def stack_up(ctx: Ctx, sources: int, targets: int, secure: bool) -> None:
    """Start every part that is not running, wait until all are healthy, write reshard.yaml.

    Running it again starts nothing twice: running parts are reported as such.
    The first run fetches the pinned Kafka, Connect and Debezium jars via Maven.
    """
    st = _stack(ctx)
    res = st.up(sources, targets, secure=secure)
    parts = [p.to_dict() for p in st.status()]
    emit(ctx, {"command": "stack up", "config": str(res.config_path), "started": res.started,
               "already_running": res.already_running, "parts": parts},
         lambda: _status_table(parts) + f"\nconfig: {res.config_path}\n"
         + (f"started: {', '.join(res.started)}" if res.started else "everything was already running"))


def _status_table(parts: list[dict]) -> str:
    lines = [f"{'part':<10} {'kind':<9} {'pid':>8} {'port':>6}  {'state':<9} endpoint"]
    for p in parts:
        state = "healthy" if p["healthy"] else ("unhealthy" if p["running"] else "stopped")
        lines.append(f"{p['name']:<10} {p['kind']:<9} {p['pid'] or '-':>8} {p['port'] or '-':>6}  {state:<9} "
                     f"{p['endpoint']}" + (f"  ({p['problem']})" if p.get("problem") else ""))
    return "\n".join(lines)


@stack.command("status")
@json_option
@click.pass_obj
def stack_status(ctx: Ctx) -> None:
    """Each part with its pid, port and health. Exit 4 unless all are healthy.

    Health includes reachability: Connect is healthy only while the broker it was
    started with is the recorded one and answers."""
    parts = [p.to_dict() for p in _stack(ctx).status()]
    emit(ctx, {"command": "stack status", "parts": parts},
         lambda: _status_table(parts) if parts else "no embedded stack here; run `reshard stack up`")
    if not parts or not all(p["healthy"] for p in parts):
        sys.exit(ExitCode.UNAVAILABLE)


@stack.command("down")
@click.option("--purge", is_flag=True, help="Also delete the stack's data, logs and reshard.yaml.")
@json_option
@click.pass_obj
def stack_down(ctx: Ctx, purge: bool) -> None:
    """Stop exactly the processes `stack up` started (by recorded pid); data is kept
    unless --purge."""
    st = _stack(ctx)
    stopped = st.down()
    removed = st.purge() if purge else []
    emit(ctx, {"command": "stack down", "stopped": stopped, "removed": removed},
         lambda: (f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
         + (f"\nremoved: {', '.join(removed)}" if removed else ""))


@stack.command("consumer-groups", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def stack_consumer_groups(ctx: Ctx, args: tuple[str, ...]) -> None:
    """Kafka's own kafka-consumer-groups against the stack's broker (or the configured one).

    Arguments go to the tool as they are; --bootstrap-server is added. The appliers of
    migration NAME are the group reshard-NAME-applier, for example:

    \b
      reshard stack consumer-groups --describe --group reshard-NAME-applier
    """
    import subprocess

    from reshard.stack.artifacts import ensure_jvm_artifacts

    art = ensure_jvm_artifacts()
    bootstrap = ctx.config().kafka.bootstrap_servers
    argv = ["java", "-Xmx256m", "-cp", art.classpath, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server", bootstrap, *args]
    sys.exit(subprocess.run(argv).returncode)


# ---- demo ---------------------------------------------------------------------------

@cli.command()
@click.option("--rows", default=100_000, show_default=True, help="Rows in the sample table before the copy.")
@click.option("--write-rate", default=200.0, show_default=True, help="Live writes per second during the run.")
@click.option("--stream-seconds", default=10.0, show_default=True,
              help="How long to keep writing after the copy, while changes stream.")
@click.option("--name", default=None, help="Migration name (default: demo_<UTC timestamp>).")
@click.option("--timeout", default=180.0, show_default=True, help="Give up catching up after this many seconds.")
@click.option("--cutover", "with_cutover", is_flag=True,
              help="Write through the router, verify under load and cut over while writing; report the write pause.")
@click.option("--cleanup", is_flag=True,
              help="Remove the migration at the end (connectors, slots, copied rows) instead of leaving it streaming.")
@json_option
@click.pass_obj
def demo(ctx: Ctx, rows: int, write_rate: float, stream_seconds: float, name: str | None, timeout: float,
         with_cutover: bool, cleanup: bool) -> None:
    """Run a verified live migration on the embedded stack (started if needed).

    Splits source1 into the targets by key hash while a writer keeps changing the
    source; prints rows copied, copy rate, events applied, time to catch up and
    the verification result. Exit 0 when the targets equal the source, 1 if not.
    The migration is left streaming for you to look at (`reshard status NAME`): its
    connector runs and its slot keeps WAL until it is removed, as the report says how;
    --cleanup removes it at once, and the next demo removes earlier ones.
    """
    from reshard.stack import Stack
    from reshard.stack.demo import render, run_demo

    home = state_dir()
    progress = ctx.progress()
    if ctx.config_path is None:
        st = Stack(home, say=None if ctx.json else progress.step)
        if not st.is_up():
            st.up()
        config = st.config()
    else:
        config = ctx.config()
    try:
        report = run_demo(config, progress, rows=rows, write_rate=write_rate, stream_seconds=stream_seconds,
                          name=name, timeout=timeout, cutover=with_cutover, cleanup=cleanup)
    finally:
        progress.stop()
    emit(ctx, report, lambda: render(report))
    if not report["ok"]:
        sys.exit(ExitCode.CHECK_FAILED)


# ---- shard maps and plans --------------------------------------------------------------

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


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


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
@click.option("--lock-timeout", default=2000, show_default=True,
              help="Milliseconds to wait for writes in progress on a table before giving up unchanged.")
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
@click.option("--lock-timeout", default=2000, show_default=True,
              help="Milliseconds to wait for writes in progress on a table before giving up unchanged.")
@json_option
@click.pass_obj
def fence_remove(ctx: Ctx, lock_timeout: int) -> None:
    """Remove reshard's fence from every table that has one, on every cluster. Idempotent."""
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


# ---- migrations ----------------------------------------------------------------------

@cli.command()
@click.argument("name")
@click.option("--to", "to_path", required=True, type=click.Path(dir_okay=False), help="The new shard map (YAML).")
@click.option("--from", "from_path", type=click.Path(dir_okay=False),
              help="Today's map; needed only when no map is active yet.")
@click.option("--batch-rows", default=DEFAULT_BATCH_ROWS, show_default=True,
              help="Rows per copy batch (one target commit each; a crash redoes at most one batch per unit).")
@click.option("--copy-workers", default=2, show_default=True,
              help="Copy sessions per source. Each (move, table) unit bigger than a batch is split into this "
                   "many key-range chunks; chunks of all units are copied this many at a time, every session "
                   "reading the same snapshot.")
@click.option("--max-rows-per-second", type=click.FloatRange(min=1), default=None,
              help="Cap the copy at this many rows/s per source (all its copy workers together).")
@click.option("--max-bytes-per-second", type=click.FloatRange(min=1024), default=None,
              help="Cap the copy at this many bytes/s of COPY data per source.")
@click.option("--throttle", type=click.Choice(["adaptive", "off"]), default="adaptive", show_default=True,
              help="adaptive: slow the copy while the source answers a probe query more than "
                   "--throttle-tolerance slower than before the copy, or a physical replica of it lags "
                   "more than 10 s. off: only the fixed caps, if any.")
@click.option("--throttle-tolerance", type=click.FloatRange(min=0.0), default=0.2, show_default=True,
              help="How much slower (as a share) the source's probe may get before the copy slows down.")
@json_option
@click.pass_obj
def start(ctx: Ctx, name: str, to_path: str, from_path: str | None, batch_rows: int, copy_workers: int,
          max_rows_per_second: float | None, max_bytes_per_second: float | None, throttle: str,
          throttle_tolerance: float) -> None:
    """Create migration NAME (if new), snapshot-copy the moving keys, start Debezium.

    Safe to rerun at any point: a rerun continues the copy from the targets'
    committed cursors and re-asserts the connector. After it, run `reshard apply NAME`.

    The copy is throttled so that the application on the source keeps its latency:
    progress and `reshard status` show the limit in force and why.
    """
    from reshard.coordinator import Coordinator
    from reshard.maps.shardmap import load_map
    from reshard.snapshotter.throttle import ThrottleSettings

    config = ctx.config()
    progress = ctx.progress()
    co = Coordinator.open(config, progress)
    try:
        to_map = load_map(to_path, config.clusters)
        from_map = load_map(from_path, config.clusters) if from_path else None
        existed = name in {m["name"] for m in co.store.migrations()}
        co.create(name, to_map, from_map)
        try:
            report = co.start(name, batch_rows=batch_rows, copy_workers=copy_workers, throttle=ThrottleSettings(
                max_rows_per_second, max_bytes_per_second, throttle == "adaptive", throttle_tolerance))
        except ReshardError:
            # a migration this command created and whose checks failed leaves nothing behind
            if not existed and co.store.forget_planned(name):
                click.echo(f"reshard: migration {name} was not kept: nothing was created for it", err=True)
            raise
    finally:
        progress.stop()
    doc = {"command": "start", "migration": name, **report.to_dict()}
    emit(ctx, doc, lambda: (
        f"{name}: copied {report.rows:,} rows in {report.seconds:.1f}s ({report.rows_per_second:,.0f} rows/s)"
        + (" (resumed)" if report.resumed else "")
        + (f"; created {', '.join(report.tables_created)} from the source's definition" if report.tables_created else "")
        + f"; streaming. Next: reshard apply {name}"))


STOP_GRACE_S = 30.0  # after SIGINT/SIGTERM, `reshard apply` exits within this long, graceful or not
METRICS_PORT, METRICS_PORTS = 9710, 20  # `reshard apply`'s Prometheus endpoint: the default and the range tried
EXPORTER_PORT = 9730  # `reshard exporter`'s default, after the appliers' range


@cli.command()
@click.argument("name")
@click.option("--until-caught-up", is_flag=True, help="Stop once every change committed so far is applied.")
@click.option("--timeout", default=600.0, show_default=True, help="With --until-caught-up: give up after this long.")
@click.option("--batch-size", default=2000, show_default=True, help="Records per poll and target transaction.")
@click.option("--kafka-outage", default=300.0, show_default=True,
              help="Seconds to wait for an unreachable Kafka (saying so once) before exiting with 4.")
@click.option("--metrics-port", type=int, default=None,
              help=f"Serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0: do not serve). Default "
                   f"{METRICS_PORT}, or the next free port up to {METRICS_PORT + METRICS_PORTS - 1} when other "
                   "workers on this host hold it (the port is printed and shown in `reshard status`).")
@click.option("--metrics-address", default="127.0.0.1", show_default=True,
              help="Address to serve metrics on (0.0.0.0 for a Prometheus on another host).")
@click.option("--sample-interval", default=10.0, show_default=True, type=click.FloatRange(min=2.0),
              help="Seconds between the samples (totals, lag) this worker records for `reshard report`.")
@json_option
@click.pass_obj
def apply(ctx: Ctx, name: str, until_caught_up: bool, timeout: float, batch_size: int, kafka_outage: float,
          metrics_port: int, metrics_address: str, sample_interval: float) -> None:
    """Run one applier worker for migration NAME until interrupted (SIGINT/SIGTERM).

    Workers of one migration share a Kafka consumer group: start more to split the
    partitions. Killing a worker at any moment loses nothing and applies nothing twice.
    After SIGINT/SIGTERM it finishes and commits the batch in flight, and exits within
    30 s in any case.
    Exit 5 when it paused on input it will not guess about (reason in `reshard status`).
    """
    from reshard.cdc_applier.metrics import serve
    from reshard.coordinator import Coordinator
    from reshard.errors import ConfigError

    progress = ctx.progress()
    co = Coordinator.open(ctx.config(), progress)
    candidates = [metrics_port] if metrics_port is not None else range(METRICS_PORT, METRICS_PORT + METRICS_PORTS)
    served = None
    for port in candidates:
        try:
            serve(port, metrics_address)
            served = port
            break
        except OSError as exc:
            reason = exc.strerror
    if served is None:
        raise ConfigError(f"cannot serve metrics on {metrics_address}:{'/'.join(map(str, candidates))} ({reason}): "
                          "pass --metrics-port with a free port, or 0")
    if served:
        logging.getLogger("reshard.cdc_applier.worker").info("metrics on http://%s:%d/metrics", metrics_address, served)
    stop = threading.Event()

    def stop_within_grace(*_: object) -> None:
        """Stop gracefully (finish and commit the batch in flight); a worker that has not
        stopped STOP_GRACE_S later exits anyway, printing its threads' stacks. Nothing is
        lost: offsets are committed only after their batch is applied, and a replay of
        what follows them has no second effect."""
        if stop.is_set():
            return
        stop.set()

        def force() -> None:
            print(f"reshard apply: did not stop within {STOP_GRACE_S:.0f}s of the signal; exiting now "
                  "(nothing is lost: uncommitted records are applied again, idempotently). Stacks:",
                  file=sys.stderr, flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            os._exit(ExitCode.OK)

        timer = threading.Timer(STOP_GRACE_S, force)
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_within_grace)
    task = progress.task("apply", unit="events")
    try:
        stats = co.apply(name, stop, until_caught_up=until_caught_up, timeout=timeout, task=task,
                         batch_size=batch_size, kafka_outage_s=kafka_outage, sample_every_s=sample_interval)
        task.close()
    finally:
        progress.stop()
    doc = {"command": "apply", "migration": name, **stats.to_dict()}
    emit(ctx, doc, lambda: f"{name}: applied {stats.applied:,} of {stats.records:,} records "
         f"({stats.skipped_stale:,} stale or superseded, {stats.dead_letters} dead letters)")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--port", default=EXPORTER_PORT, show_default=True, help="Serve /metrics on this port.")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to serve on (0.0.0.0 for a Prometheus on another host).")
@click.option("--interval", default=5.0, show_default=True,
              help="Seconds between refreshes; a scrape returns the latest refresh at once.")
@click.pass_obj
def exporter(ctx: Ctx, names: tuple[str, ...], port: int, address: str, interval: float) -> None:
    """Serve migration-level Prometheus metrics until interrupted (SIGINT/SIGTERM).

    For NAMES, or every live migration (not completed or aborted) when none are given:
    state, copy progress, live appliers, slot WAL retained and unconfirmed, connector
    and task states, consumer lag per partition, dead letters, fences on every cluster,
    cutover and rollback write pauses, the last verification. Read from the control
    database, the clusters, Kafka and Connect every --interval seconds; a part that
    cannot be reached is left out and counted in reshard_exporter_errors_total. The
    applier workers serve their own metrics (see `reshard apply --metrics-port`).
    """
    from dataclasses import replace

    from reshard.coordinator import Coordinator
    from reshard.observe import exporter as exp

    co = replace(Coordinator.open(ctx.config()), log_context=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        exp.run(co, stop, port=port, address=address, interval=interval, migrations=list(names) or None)
    except OSError as exc:
        from reshard.errors import ConfigError

        raise ConfigError(f"cannot serve metrics on {address}:{port} ({exc.strerror}): pass a free --port") from None
    print("reshard exporter: stopped", file=sys.stderr)


@cli.command()
@click.argument("name")
@click.option("--timeout", default=300.0, show_default=True, help="Give up (exit 6) after this many seconds.")
@json_option
@click.pass_obj
def wait(ctx: Ctx, name: str, timeout: float) -> None:
    """Return once the targets hold every change committed on the sources before now.

    Proven, not estimated: the slot confirms the current WAL position, then the
    applier's committed offsets reach the end of every partition read after that.
    """
    from reshard.coordinator import Coordinator

    res = Coordinator.open(ctx.config()).wait(name, timeout=timeout)
    emit(ctx, {"command": "wait", "migration": name, **res.to_dict()},
         lambda: f"{name}: caught up in {res.seconds:.2f}s (" + ", ".join(
             f"{stream} confirmed at {lsn}" for stream, lsn in res.positions.items()) + ")")


@cli.command()
@click.argument("name", required=False)
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C: a live view on a terminal; with --json, one "
              "document per line.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between --watch refreshes.")
@json_option
@click.pass_obj
def status(ctx: Ctx, name: str | None, watch: bool, interval: float) -> None:
    """A migration's state, copy progress, connectors, applier workers, lag and slot WAL.

    Lag is shown in Kafka records (read from Kafka) and in seconds (the workers' own
    measure: source commit to applied); --watch adds the current rates and ETAs, from
    two successive readings. Without NAME: the list of migrations. Exit 4 when Kafka,
    Connect or a cluster could not be reached: what could be read is still shown, and
    the document's "unreachable" names what was not.
    """
    from reshard.coordinator import Coordinator
    from reshard.observe import status_view

    co = Coordinator.open(ctx.config())
    if name is None:
        rows = co.store.migrations()
        emit(ctx, {"command": "status", "migrations": rows}, lambda: "\n".join(
            f"{r['name']:<26} {r['state']:<13} epochs {r['from_epoch']} -> {r['to_epoch']}" for r in rows
        ) or "no migrations")
        return
    if watch:
        interrupt_on_signals()
        status_view.watch(lambda: {"command": "status", **co.status(name)}, interval,
                          dump=(lambda doc: dumps(doc, indent=None)) if ctx.json else None)
        return
    doc = co.status(name)
    emit(ctx, {"command": "status", **doc}, lambda: status_view.human(doc))
    if doc.get("unreachable"):
        raise SystemExit(ExitCode.UNAVAILABLE)


@cli.command()
@click.argument("name")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the PNG (default: NAME.png).")
@json_option
@click.pass_obj
def report(ctx: Ctx, name: str, out_path: str | None) -> None:
    """Plot a migration's apply rate and lag (seconds, records) over its life into a PNG.

    From the samples its appliers recorded while they ran (every --sample-interval
    seconds), cutovers and rollbacks marked. Needs matplotlib (pip install 'reshard[report]').
    """
    from pathlib import Path

    from reshard.coordinator import Coordinator
    from reshard.observe.report import write_png

    co = Coordinator.open(ctx.config())
    co.record(name)
    done = write_png(co.store, name, Path(out_path or f"{name}.png"))
    emit(ctx, {"command": "report", "migration": name, **done},
         lambda: f"{name}: wrote {done['path']} ({done['samples']} samples from {done['workers']} worker(s), "
                 f"{done['from'][:19]} to {done['to'][:19]})")


def _fraction_per_table(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for v in values:
        table, sep, frac = v.rpartition("=")
        try:
            out[table] = float(frac)
        except ValueError:
            sep = ""
        if not sep or not table:
            raise click.BadParameter(f"{v!r}: write TABLE=FRACTION, e.g. public.accounts=0.05")
    return out


@cli.command()
@click.argument("name")
@click.option("--sample", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Fraction of the routers' reads of moving keys to repeat on the new owner.")
@click.option("--table", "tables", multiple=True, metavar="TABLE=FRACTION", callback=_fraction_per_table,
              help="A table's own fraction (repeatable), e.g. public.accounts=0.05.")
@click.option("--off", is_flag=True, help="Stop shadow reads (the migration goes back to streaming).")
@json_option
@click.pass_obj
def shadow(ctx: Ctx, name: str, sample: float, tables: dict[str, float], off: bool) -> None:
    """Shadow reads: routers repeat a sample of reads on the new owners and compare.

    Sets the migration's shadow sample in the control database; every Router made with
    Router.from_config picks it up within seconds, repeats the sampled reads of moving
    keys on their new owner off the request path, and settles differing results after
    proving catch-up, so replication lag is not reported as corruption. A confirmed
    mismatch is an event (shadow.mismatch) and a failed verification: the cutover gate
    refuses until `reshard verify` passes again. The migration is `shadowing` meanwhile.
    Counts per table: `reshard status` and the exporter's reshard_router_shadow_reads.
    """
    from reshard.coordinator import Coordinator

    co = Coordinator.open(ctx.config())
    done = co.shadow(name, 0.0 if off else sample, {t: 0.0 for t in tables} if off else tables)
    emit(ctx, {"command": "shadow", "migration": name, **done},
         lambda: f"{name}: {done['state']}; shadow reads "
                 + ("off" if done["shadow"] is None else
                    f"sample {sample:g}" + "".join(f", {t} {f:g}" for t, f in tables.items())))


@cli.command()
@click.argument("name")
@click.option("--max-diffs", default=20, show_default=True, help="Differing keys to list per table.")
@click.option("--continuous", is_flag=True,
              help="Keep checking while the migration streams or bakes: walk the key space in primary-key chunks, "
                   "throttled, settle differing chunks under row locks after catch-up, report divergence as "
                   "events and in status; runs until SIGTERM/SIGINT, --passes or --duration.")
@click.option("--chunk-rows", type=click.IntRange(min=10), default=200, show_default=True,
              help="--continuous: rows per chunk (each chunk is one short burst of reads on both sides).")
@click.option("--max-rows-per-second", type=click.FloatRange(min=1), default=2000.0, show_default=True,
              help="--continuous: rows compared per second at most (both sides read them).")
@click.option("--passes", type=click.IntRange(min=1), default=None, help="--continuous: stop after this many passes.")
@click.option("--duration", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="--continuous: stop after this long.")
@json_option
@click.pass_obj
def verify(ctx: Ctx, name: str, max_diffs: int, continuous: bool, chunk_rows: int, max_rows_per_second: float,
           passes: int | None, duration: float | None) -> None:
    """Compare the sources with the union of the targets for everything that moves.

    Row counts and a checksum per target and table; on a difference, the keys. Under
    a live load the two sides are read moments apart, so keys that differ are re-checked:
    their rows are locked where they are written, catch-up is proven, then compared.
    Exit 0 when equal, 1 when not. With --continuous: exit 1 when any pass found
    divergence, 0 when none did.
    """
    from reshard.coordinator import Coordinator

    co = Coordinator.open(ctx.config())
    if continuous:
        _verify_continuous(ctx, co, name, max_diffs, chunk_rows, max_rows_per_second, passes, duration)
        return
    rep = co.verify(name, max_diffs)
    doc = {"command": "verify", "migration": name, **rep.to_dict()}

    def human() -> str:
        out = [f"{name}: {'EQUAL' if rep.equal else 'DIFFERENT'} ({rep.seconds:.2f}s)"]
        for c in rep.checks:
            out.append(f"  {c.move} {c.table}: source {c.source_rows:,} rows, target {c.target_rows:,} rows, "
                       f"{'checksums equal' if c.source_checksum == c.target_checksum else 'checksums differ'}"
                       + (f", {c.misplaced_rows} misplaced" if c.misplaced_rows else ""))
            for diff in c.differences:
                out.append(f"    key {diff['key']}: {diff['problem']}")
        return "\n".join(out)

    emit(ctx, doc, human)
    if not rep.equal:
        sys.exit(ExitCode.CHECK_FAILED)


def _verify_continuous(ctx: Ctx, co, name: str, max_diffs: int, chunk_rows: int, max_rows_per_second: float,
                       passes: int | None, duration: float | None) -> None:
    import signal
    import threading

    from reshard.proof.continuous_check import ContinuousChecker

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    progress = ctx.progress()
    try:
        results = ContinuousChecker(co, name, chunk_rows, max_rows_per_second, max_diffs, say=progress.step,
                                    stop=stop).run(passes, duration)
    finally:
        progress.stop()
    mismatches = [m for r in results for m in r.to_dict()["mismatches"]]
    doc = {"command": "verify", "migration": name, "mode": "continuous", "equal": not mismatches,
           "passes": [r.to_dict() for r in results]}
    emit(ctx, doc, lambda: f"{name}: {len(results)} pass(es), "
         + (f"{len(mismatches)} divergent key(s): " + "; ".join(f"{m['table']} {m['key']} {m['problem']}"
                                                                   for m in mismatches[:max_diffs])
            if mismatches else "no divergence"))
    if mismatches:
        sys.exit(ExitCode.CHECK_FAILED)


# ---- cutover, rollback, complete, abort -------------------------------------------------

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


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """'30m', '90s', '2h' or plain seconds."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    text = value.strip().lower()
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise click.BadParameter(f"{value!r}: write a duration such as 30m, 90s or 2h")
    return seconds


def _switch_flags(f: Callable) -> Callable:
    f = click.option("--dry-run", is_flag=True,
                     help="Print the exact steps with today's positions and gate values; change nothing.")(f)
    f = click.option("--reconcile", "reconcile_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML file of reconciliation checks (named SQL aggregates per table, e.g. sum(amount) "
                          "per currency) that must agree between the sources' moving rows and the targets at the "
                          "fence; a disagreement backs out (exit 13). Kept with the migration for its later waves "
                          "and rollback; without it, the checks given before (to start or an earlier switch) run.")(f)
    f = click.option("--lock-timeout", default=500, show_default=True,
                     help="Milliseconds a fence change may wait for writes in progress before backing out.")(f)
    f = click.option("--max-write-pause", default=2.0, show_default=True,
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
@click.option("--wait-for-gates", default=0.0, show_default=True, metavar="SECONDS",
              help="Wait up to this long (and within --window) for the gates to pass before giving up.")
@click.option("--bake", "bake_for", default=None, metavar="DURATION", callback=_duration,
              help="After the last wave, watch rollback triggers this long (e.g. 30m, 90s) and roll back by "
                   "itself on the first that fires (exit 14); see the Bake section of the README.")
@click.option("--bake-check", "bake_checks", multiple=True, metavar="COMMAND",
              help="--bake: a command run at every look; exit 0 is healthy, anything else (or a timeout) rolls back.")
@click.option("--prometheus", "prometheus_url", default=None, metavar="URL",
              help="--bake: the Prometheus that --bake-query asks (e.g. http://127.0.0.1:9090).")
@click.option("--bake-query", "bake_queries", multiple=True, metavar="PROMQL",
              help="--bake: a PromQL query asked at every look; a non-zero value rolls back.")
@click.option("--bake-interval", type=click.FloatRange(min=0.5), default=2.0, show_default=True, metavar="SECONDS",
              help="--bake: seconds between two looks at the triggers.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="--bake: the routers' error rate (errors per operation over 15 s) that rolls back.")
@click.option("--max-fence-rejections", type=click.IntRange(min=0), default=1000, show_default=True,
              help="--bake: fence rejections the routers may meet during the bake before it rolls back.")
@click.option("--max-reverse-lag", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="--bake: reverse-stream Kafka records not yet applied to the sources that roll back.")
@click.option("--bake-reconcile-every", default=None, metavar="DURATION", callback=_duration,
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

    bake = None
    if bake_for is not None:
        if only is not None or dry_run:
            raise click.UsageError("--bake follows the last wave of a real cutover: not with --only or --dry-run")
        if bake_queries and not prometheus_url:
            raise click.UsageError("--bake-query needs --prometheus URL")
        from reshard.cutover.bake import BakeOptions

        bake = BakeOptions(bake_for, bake_interval, max_error_rate=max_error_rate,
                           max_fence_rejections=max_fence_rejections, max_reverse_lag=max_reverse_lag,
                           checks=list(bake_checks), prometheus_url=prometheus_url, queries=list(bake_queries),
                           complete_after=complete_after_bake, reconcile_every=bake_reconcile_every)
    elif complete_after_bake or bake_checks or bake_queries or bake_reconcile_every:
        raise click.UsageError("--complete-after-bake, --bake-check, --bake-query and --bake-reconcile-every need "
                               "--bake DURATION")
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
            gates = co.wait_for_gates(name, opts, wait_for_gates, win)
            if not all(gt.ok for gt in gates):
                failed = [gt for gt in gates if not gt.ok]
                doc = {"command": "cutover", "migration": name, "outcome": Outcome.GATES,
                       "gates": [gt.to_dict() for gt in gates], "exit_code": int(failed[0].code)}
                emit(ctx, doc, lambda: f"{name}: gates not met after {wait_for_gates:.0f}s: "
                     + "; ".join(f"{gt.name}: {gt.detail}" for gt in failed))
                sys.exit(failed[0].code)
        result = co.cutover(name, opts)
        baked = None
        if bake is not None and result.outcome == Outcome.DONE:
            baked = _bake(config, name, bake, opts, progress)
    finally:
        progress.stop()
    doc = {"command": "cutover", **result.to_dict(), **({"bake": baked.to_dict()} if baked else {})}
    emit(ctx, doc, lambda: _switch_human(doc) + (f"\nbake: {baked.message}" if baked else ""))
    sys.exit(baked.exit_code if baked else result.exit_code)


def _bake(config: Config, name: str, bake, opts, progress):
    import signal

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


def _confirm(yes: bool, question: str) -> None:
    from reshard.errors import ConfigError

    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} Not asking without a terminal: pass --yes")
    if not click.confirm(question, default=False, err=True):
        raise click.exceptions.Abort()


@cli.command("complete")
@click.argument("name")
@click.option("--keep-source-data", is_flag=True, help="Do not delete the moved rows from the sources.")
@click.option("--drop-fences", is_flag=True,
              help="Remove reshard's fence triggers too (stale routers could then write to old owners).")
@click.option("--batch-rows", default=5000, show_default=True, help="Rows deleted per source transaction.")
@click.option("--throttle", default=0.05, show_default=True, help="Seconds to pause between delete batches.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def complete_cmd(ctx: Ctx, name: str, keep_source_data: bool, drop_fences: bool, batch_rows: int, throttle: float,
                 yes: bool) -> None:
    """The point of no return: stop reverse and forward replication, drop what reshard
    created, delete the moved rows from the sources in throttled batches.

    Every step is recorded and idempotent: rerun it after a crash. Rollback is no
    longer possible afterwards. Fences stay, enforcing the final map, unless --drop-fences.
    """
    from reshard.coordinator import Coordinator

    _confirm(yes, f"Complete migration {name}? Rollback will no longer be possible"
             + ("." if keep_source_data else " and the moved rows will be deleted from the sources."))
    config = ctx.config()
    progress = ctx.progress()
    try:
        result = Coordinator.open(config, progress).complete(name, keep_source_data=keep_source_data,
                                                            drop_fences=drop_fences, batch_rows=batch_rows,
                                                            pause_s=throttle)
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

    _confirm(yes, f"Abort migration {name} and drop what it created"
             + ("?" if keep_target_data else ", including the rows copied to the targets?"))
    done = Coordinator.open(ctx.config()).teardown(name, drop_target_rows=not keep_target_data)
    emit(ctx, {"command": "abort", "migration": name, "actions": done},
         lambda: f"{name}: aborted\n" + "\n".join(f"  {a}" for a in done))


# ---- entry point -----------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ctx_holder: dict[str, Any] = {}
    try:
        with cli.make_context("reshard", list(argv if argv is not None else sys.argv[1:])) as ctx:
            ctx_holder["ctx"] = ctx
            cli.invoke(ctx)
        sys.exit(ExitCode.OK)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except ReshardError as exc:
        _fail(ctx_holder, str(exc), exc.exit_code, type(exc).__name__)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug or an unforeseen failure: say so, keep the traceback
        import traceback

        traceback.print_exc()
        _fail(ctx_holder, f"internal error: {type(exc).__name__}: {exc}", ExitCode.ERROR, "InternalError")


def _fail(ctx_holder: dict, message: str, code: ExitCode, kind: str) -> None:
    ctx = ctx_holder.get("ctx")
    obj = ctx.obj if ctx is not None else None
    used = obj.config_used() if isinstance(obj, Ctx) else None
    if isinstance(obj, Ctx) and obj.json:
        click.echo(json.dumps({"version": JSON_VERSION, "ok": False, "error": message, "kind": kind,
                               "exit_code": int(code), **({"config_file": used} if used else {})}, indent=2))
    where = f" (config: {used['path']})" if used and used["path"] not in message else ""
    click.echo(f"reshard: {message}{where}", err=True)
    sys.exit(int(code))


if __name__ == "__main__":
    main()
