"""The `reshard` group: global options (config, progress, logs) and the exit codes in its help."""

from __future__ import annotations

import click

from reshard import __version__
from reshard.cli.context import Ctx, emit, json_option
from reshard.exit_codes import describe
from reshard.observe.logs import FORMATS, LEVELS
from reshard.observe.logs import configure as configure_logging

EPILOG = "Exit codes:\n\n\b\n" + describe()


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="reshard",
                      message="%(prog)s %(version)s (details, --json: `reshard version`)")
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


COMPLETE_VAR = "_RESHARD_COMPLETE"


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL; load it from your shell's startup file.

    \b
      bash:  eval "$(reshard completion bash)"     (in ~/.bashrc; bash 4.4 or newer)
      zsh:   eval "$(reshard completion zsh)"      (in ~/.zshrc)
      fish:  reshard completion fish > ~/.config/fish/completions/reshard.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the choice above lists only shells click completes
    click.echo(cls(cli, {}, "reshard", COMPLETE_VAR).source())


@cli.command()
@json_option
@click.pass_obj
def version(ctx: Ctx) -> None:
    """reshard's version, the Kafka, Debezium and Apicurio versions it pins, the PostgreSQL majors
    it supports and the one `stack up` runs by default."""
    import platform

    from reshard.stack import pg_binaries
    from reshard.stack.artifacts import pinned

    pins = pinned()
    doc = {"command": "version", "migration": None, "reshard": __version__, "pins": pins,
           "postgresql": {"supported": list(pg_binaries.SUPPORTED), "default": pg_binaries.DEFAULT},
           "python": platform.python_version()}
    labels = {"kafka": "Kafka", "debezium": "Debezium", "apicurio": "Apicurio registry",
              "apicurio_converter": "Apicurio converter"}
    emit(ctx, doc, lambda: f"reshard {__version__}\n" + "".join(
        f"  {labels.get(k, k):<19} {v}\n" for k, v in pins.items())
        + f"  {'PostgreSQL':<19} {', '.join(map(str, pg_binaries.SUPPORTED))} (default {pg_binaries.DEFAULT})\n"
        + f"  {'Python':<19} {doc['python']}")
