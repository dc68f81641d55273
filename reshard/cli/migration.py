"""Commands that run and watch a migration: `start`, `apply`, `exporter`, `wait`, `status`, `report`, `shadow`, `verify`."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

from reshard.cli.context import Ctx, Duration, Size, dumps, emit, json_option
from reshard.cli.root import cli
from reshard.cli.signals import interrupt_on_signals, stop_on_signals
from reshard.errors import ReshardError
from reshard.exit_codes import ExitCode
from reshard.snapshotter.snapshot import DEFAULT_BATCH_ROWS


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
              help="adaptive: hold the copy to --max-latency-impact on the application's transactions on the "
                   "source (sampled in flight every 20 ms; with no application session the copy is not held "
                   "back), and slow it while a physical replica lags more than 10 s. off: only the fixed caps.")
@click.option("--max-latency-impact", type=Duration(per="ms", min=1), default="5ms", show_default=True,
              help="The adaptive throttle's budget (5ms, 20ms): how much the 95th percentile of the "
                   "application's transaction latency on the source may grow over what it was before the copy "
                   "(2s windows). `reshard throttle --max-latency-impact` changes it while the copy runs.")
@click.option("--on-ddl", type=click.Choice(["apply", "pause", "ignore"]), default=None,
              help="What a schema change on a moving table does while the migration runs. apply (the "
                   "default): placed on the destinations, additive changes at once, destructive ones once "
                   "every source stream passed them; what reshard cannot place safely pauses the appliers. "
                   "pause: every change pauses them until `reshard ddl resolve`. ignore: nothing is placed (a "
                   "row that no longer fits pauses as drift). Kept with the migration; given on a rerun, it "
                   "replaces the one kept.")
@click.option("--max-slot-wal", type=Size(), default=None,
              help="WAL the stream may leave unconfirmed on a source while the copy runs (512MB, 10GB): above 80 % "
                   "the copy runs at its floor, above it the copy pauses until the stream has confirmed all but "
                   "half. Default: 80 % of the source's max_slot_wal_keep_size (past which PostgreSQL would drop "
                   "the slot), none if that is unset. `reshard throttle --max-slot-wal` changes it while it runs.")
@click.option("--skip-check", "skip_checks", multiple=True,
              type=click.Choice(["version", "wal_level", "replication_slots", "wal_senders", "privileges"]),
              help="A failing cluster check to accept (repeatable); `reshard check` lists them all.")
@json_option
@click.pass_obj
def start(ctx: Ctx, name: str, to_path: str, from_path: str | None, batch_rows: int, copy_workers: int,
          max_rows_per_second: float | None, max_bytes_per_second: float | None, throttle: str,
          max_latency_impact: float, on_ddl: str | None, max_slot_wal: int | None,
          skip_checks: tuple[str, ...]) -> None:
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
        rec = co.create(name, to_map, from_map, settings={"on_ddl": on_ddl or "apply"})
        if on_ddl and rec.settings.get("on_ddl") != on_ddl:
            co.store.update_settings(name, on_ddl=on_ddl)
        try:
            report = co.start(name, batch_rows=batch_rows, copy_workers=copy_workers, throttle=ThrottleSettings(
                max_rows_per_second, max_bytes_per_second, throttle == "adaptive",
                max_latency_impact_ms=float(max_latency_impact), max_slot_wal_bytes=max_slot_wal),
                skip_checks=skip_checks)
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


METRICS_PORT, METRICS_PORTS = 9710, 20  # `reshard apply`'s Prometheus endpoint: the default and the range tried


EXPORTER_PORT = 9730  # `reshard exporter`'s default, after the appliers' range


@cli.command()
@click.argument("name")
@click.option("--until-caught-up", is_flag=True, help="Stop once every change committed so far is applied.")
@click.option("--timeout", type=Duration(), default=600.0, show_default=True,
              help="With --until-caught-up: give up after this long (10m, 600s).")
@click.option("--batch-rows", "--batch-size", "batch_size", default=2000, show_default=True,
              help="Records per poll and target transaction (--batch-size: its former name).")
@click.option("--kafka-outage", type=Duration(), default=300.0, show_default=True,
              help="How long to wait for an unreachable Kafka (saying so once) before exiting with 4 (5m, 300s).")
@click.option("--metrics-port", type=int, default=None,
              help=f"Serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0: do not serve). Default "
                   f"{METRICS_PORT}, or the next free port up to {METRICS_PORT + METRICS_PORTS - 1} when other "
                   "workers on this host hold it (the port is printed and shown in `reshard status`).")
@click.option("--metrics-address", default="127.0.0.1", show_default=True,
              help="Address to serve metrics on (0.0.0.0 for a Prometheus on another host).")
@click.option("--sample-interval", default=10.0, show_default=True, type=Duration(min=2.0),
              help="Time between the samples (totals, lag) this worker records for `reshard report` (10s).")
@click.option("--on-pause", type=click.Choice(["exit", "wait"]), default="exit", show_default=True,
              help="When the worker pauses on input it will not guess about (a schema change it will not place, "
                   "a row missing for a partial update): exit 5, for supervisors that leave it stopped (systemd's "
                   "RestartPreventExitStatus), or stay up and try again every --pause-recheck, for those that "
                   "restart whatever the exit code (a Kubernetes Deployment). Either way nothing is applied past "
                   "the input, the reason is logged and in `reshard status`, and reshard_applier_paused is 1.")
@click.option("--pause-recheck", type=Duration(min=1.0), default=30.0, show_default=True,
              help="With --on-pause wait: how often to try again (30s); the reason is logged again only if it changes.")
@json_option
@click.pass_obj
def apply(ctx: Ctx, name: str, until_caught_up: bool, timeout: float, batch_size: int, kafka_outage: float,
          metrics_port: int, metrics_address: str, sample_interval: float, on_pause: str,
          pause_recheck: float) -> None:
    """Run one applier worker for migration NAME until interrupted (SIGINT/SIGTERM), or until the
    migration completes or is aborted (exit 0).

    Workers of one migration share a Kafka consumer group: start more to split the
    partitions. Killing a worker at any moment loses nothing and applies nothing twice.
    After SIGINT/SIGTERM it finishes and commits the batch in flight, and exits within
    30 s in any case.
    Exit 5 when it paused on input it will not guess about (reason in `reshard status`),
    unless --on-pause wait.
    """
    from reshard.cdc_applier.metrics import PAUSED, serve_first_free
    from reshard.coordinator import Coordinator

    progress = ctx.progress()
    co = Coordinator.open(ctx.config(), progress)
    served = serve_first_free([metrics_port] if metrics_port is not None else
                              list(range(METRICS_PORT, METRICS_PORT + METRICS_PORTS)), metrics_address)
    if served:
        logging.getLogger("reshard.cdc_applier.worker").info("metrics on http://%s:%d/metrics", metrics_address, served)
    stop = threading.Event()
    stop_on_signals(stop, "reshard apply")
    task = progress.task("apply", unit="events")
    log = logging.getLogger("reshard.cdc_applier.worker")
    said = ""
    try:
        while True:
            # after a pause, an attempt that runs a recheck's time without pausing again has gone on
            cleared = threading.Timer(pause_recheck, PAUSED.labels(name).set, (0,))
            cleared.daemon = True
            cleared.start()
            try:
                stats = co.apply(name, stop, until_caught_up=until_caught_up, timeout=timeout, task=task,
                                 batch_size=batch_size, kafka_outage_s=kafka_outage, sample_every_s=sample_interval)
                break
            except ReshardError as exc:
                cleared.cancel()
                if exc.exit_code != ExitCode.PAUSED or on_pause == "exit":
                    raise
                PAUSED.labels(name).set(1)
                if str(exc) != said:
                    said = str(exc)
                    log.warning("paused: %s (--on-pause wait: trying again every %.0fs)", exc, pause_recheck)
                if stop.wait(pause_recheck):
                    raise  # stopped while paused: the pause is still the answer
            finally:
                cleared.cancel()
        task.close()
    finally:
        progress.stop()
    doc = {"command": "apply", "migration": name, **stats.to_dict()}
    emit(ctx, doc, lambda: f"{name}: applied {stats.applied:,} of {stats.records:,} records "
         f"({stats.skipped_stale:,} stale or superseded, {stats.dead_letters} dead letters)")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--metrics-port", "--port", "port", default=EXPORTER_PORT, show_default=True,
              help="Serve /metrics on this port (--port: its former name).")
@click.option("--metrics-address", "--address", "address", default="127.0.0.1", show_default=True,
              help="Address to serve on (0.0.0.0 for a Prometheus on another host).")
@click.option("--interval", type=Duration(), default=5.0, show_default=True,
              help="Time between refreshes (5s); a scrape returns the latest refresh at once.")
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
@click.option("--timeout", type=Duration(), default=300.0, show_default=True,
              help="Give up (exit 6) after this long (5m, 300s).")
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
@click.option("--interval", type=Duration(), default=1.0, show_default=True,
              help="Time between --watch refreshes (2s, 500ms).")
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
@click.option("--follow", is_flag=True, help="Keep printing new events as they are recorded, until Ctrl-C.")
@click.option("--last", default=20, show_default=True, type=click.IntRange(min=0),
              help="How many of the newest events to print first.")
@click.option("--interval", type=Duration(), default=1.0, show_default=True,
              help="--follow: how often to look for new events (1s, 500ms).")
@json_option
@click.pass_obj
def events(ctx: Ctx, name: str, follow: bool, last: int, interval: float) -> None:
    """The audit log of migration NAME: every state change, switch step, schema change, pause and
    verification, with who did it. With --json: one document per batch of events, one per line
    with --follow (the same entries `reshard.events` carries on Kafka)."""
    import time as _time

    from reshard.control.store import ControlStore

    store = ControlStore(ctx.config().control_dsn)
    store.migration(name)

    def show(rows: list[dict]) -> None:
        doc = {"command": "events", "migration": name, "events": [
            {"id": r["id"], "at": r["at"].isoformat(), "event": r["event"], "actor": r.get("actor"),
             "detail": r["detail"]} for r in rows]}
        if ctx.json:
            click.echo(dumps(doc, indent=None if follow else 2))
        else:
            for e in doc["events"]:
                detail = ", ".join(f"{k}={v}" for k, v in (e["detail"] or {}).items())
                click.echo(f"{e['at'][:19]}  {e['event']:<22} {detail[:160]}")

    newest = store.recent_events(name, last) if last else []
    after = newest[-1]["id"] if newest else (store.recent_events(name, 1) or [{"id": 0}])[-1]["id"]
    if newest or not follow:
        show(store.migration_events_after(name, newest[0]["id"] - 1, last) if newest else [])
    if not follow:
        return
    interrupt_on_signals()
    try:
        while True:
            rows = store.migration_events_after(name, after, 500)
            if rows:
                show(rows)
                after = rows[-1]["id"]
            else:
                _time.sleep(interval)
    except KeyboardInterrupt:
        return


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
@click.option("--duration", type=Duration(min=1), default=None,
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
