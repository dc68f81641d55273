"""Commands that set up the world: `config`, the embedded `stack`, and the `demo`."""

from __future__ import annotations

import sys

import click

from reshard.cli.context import Ctx, Duration, confirm, emit, json_option
from reshard.cli.root import cli
from reshard.config import state_dir
from reshard.exit_codes import ExitCode
from reshard.stack import pg_binaries


@cli.command("config")
@json_option
@click.pass_obj
def config_cmd(ctx: Ctx) -> None:
    """Say which reshard.yaml is read, why, and whether it is valid (exit 3 if not).

    Valid means: the schema holds, and every check `start` makes on the config alone passes
    (today: each connector's password reaches Debezium as a reference the Connect worker
    resolves). What needs the servers is `reshard check --to MAP`'s.

    \b
    Precedence (the first that applies wins):
      1. --config PATH (or $RESHARD_CONFIG): that file and no other
      2. ./reshard.yaml in the working directory
      3. the embedded stack's: $RESHARD_HOME/reshard.yaml, else ./.reshard/reshard.yaml
    Schemas for editors: schemas/files/reshard.yaml.schema.json and shard-map.schema.json.
    """
    from dataclasses import asdict

    from reshard.config import PRECEDENCE
    from reshard.preflight import Preflight, config_checks

    config = ctx.config()
    checks = Preflight()
    config_checks(config, checks)
    failed = checks.failed()
    doc = {"command": "config", "precedence": list(PRECEDENCE), "valid": not failed,
           "clusters": sorted(config.clusters), "kafka_format": config.kafka.format,
           "connect_url": config.connect.url, "checks": [asdict(c) for c in checks.checks]}
    emit(ctx, doc, lambda: "\n".join([
        f"config      {config.path}", f"chosen by   {config.chosen_by}",
        "valid       " + ("yes" if not failed else "no"),
        f"clusters    {', '.join(sorted(config.clusters))}",
        *[f"{c.result:<5} {c.cluster}: {c.detail}" for c in checks.checks],
        "precedence  (the first that applies wins)",
        *[f"  {i}. {rule}" for i, rule in enumerate(PRECEDENCE, 1)],
    ]))
    if failed:
        sys.exit(ExitCode.BAD_INPUT)


@cli.group()
def stack() -> None:
    """The embedded stack: real PostgreSQL, Kafka, Kafka Connect and Debezium on 127.0.0.1.

    State, data and logs live in ./.reshard (or $RESHARD_HOME).
    """


PG_MAJORS = [str(m) for m in pg_binaries.SUPPORTED]


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
@click.option("--pg-version", type=click.Choice(PG_MAJORS), default=None,
              help=f"PostgreSQL major of the clusters created now (default {pg_binaries.DEFAULT}).")
@click.option("--source-pg-version", type=click.Choice(PG_MAJORS), default=None,
              help="PostgreSQL major of the source clusters (default: --pg-version).")
@click.option("--target-pg-version", type=click.Choice(PG_MAJORS), default=None,
              help="PostgreSQL major of the target clusters (default: --pg-version); not older than the sources'.")
@click.option("--standby", is_flag=True,
              help="Give each source a streaming standby (synchronizing failover slots on 17+) and list both in "
                   "reshard.yaml (target_session_attrs=read-write), to fail a source over: see docs/runbook/source-failover.md. "
                   "Chosen when the stack is created; later runs keep it.")
@json_option
@click.pass_obj
def stack_up(ctx: Ctx, sources: int, targets: int, secure: bool, pg_version: str | None,
             source_pg_version: str | None, target_pg_version: str | None, standby: bool) -> None:
    """Start every part that is not running, wait until all are healthy, write reshard.yaml.

    Running it again starts nothing twice: running parts are reported as such.
    The first run fetches the pinned Kafka, Connect and Debezium jars via Maven, and a
    PostgreSQL major Debian does not provide from Maven Central. A cluster keeps the
    major it was created with (`stack down --purge` to change it).
    """
    from reshard.stack.stack import PgVersions

    def major(v: str | None) -> int | None:
        return int(v) if v else None
    pg = PgVersions(major(pg_version), major(source_pg_version), major(target_pg_version))
    st = _stack(ctx)
    res = st.up(sources, targets, secure=secure, pg=pg, standby=standby)
    parts = [p.to_dict() for p in st.status()]
    emit(ctx, {"command": "stack up", "config": str(res.config_path), "started": res.started,
               "already_running": res.already_running, "parts": parts},
         lambda: _status_table(parts) + f"\nconfig: {res.config_path}\n"
         + (f"started: {', '.join(res.started)}" if res.started else "everything was already running"))


def _status_table(parts: list[dict]) -> str:
    lines = [f"{'part':<10} {'kind':<12} {'pid':>8} {'port':>6}  {'state':<9} endpoint"]
    for p in parts:
        state = "healthy" if p["healthy"] else ("unhealthy" if p["running"] else "stopped")
        kind = f"{p['kind']} {p['version']}" if p.get("version") else p["kind"]
        lines.append(f"{p['name']:<10} {kind:<12} {p['pid'] or '-':>8} {p['port'] or '-':>6}  {state:<9} "
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
@click.option("--purge", is_flag=True, help="Also delete the stack's data, logs and reshard.yaml (asks first).")
@click.option("--yes", is_flag=True, help="With --purge: do not ask for confirmation.")
@json_option
@click.pass_obj
def stack_down(ctx: Ctx, purge: bool, yes: bool) -> None:
    """Stop exactly the processes `stack up` started (by recorded pid); data is kept
    unless --purge."""
    if purge:
        confirm(yes, "Delete the embedded stack's data (every cluster, Kafka's topics), logs and reshard.yaml?")
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


@cli.command()
@click.option("--rows", default=100_000, show_default=True, help="Rows in the sample table before the copy.")
@click.option("--write-rate", default=200.0, show_default=True, help="Live writes per second during the run.")
@click.option("--stream-seconds", type=Duration(), default=10.0, show_default=True,
              help="How long to keep writing after the copy, while changes stream.")
@click.option("--name", default=None, help="Migration name (default: demo_<UTC timestamp>).")
@click.option("--timeout", type=Duration(), default=180.0, show_default=True,
              help="Give up catching up after this long (3m, 180s).")
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
