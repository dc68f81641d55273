"""The `reshard` command: a thin layer over the library.

Each command parses its options, calls one library function, and prints the result:
for people on stderr/stdout, or with ``--json`` one versioned JSON document on stdout
and nothing else there. Progress goes to stderr. Typed errors become one line and
the exit code documented in reshard/exit_codes.py.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import click

from reshard.cli import ddl, maps, migration, stack, steer, switch  # noqa: F401  (they register their commands)
from reshard.cli.context import JSON_VERSION, Ctx
from reshard.cli.root import COMPLETE_VAR, cli
from reshard.errors import ReshardError
from reshard.exit_codes import ExitCode

__all__ = ["cli", "main"]


class _Recording(click.Context):
    """A command's context that notes, as the command starts, which command runs and on which
    migration: an error document names them (see ``_fail``)."""

    def invoke(self, callback: Any, /, *args: Any, **kwargs: Any) -> Any:
        obj = self.find_object(Ctx)
        if obj is not None and self.command.callback is callback and not isinstance(self.command, click.Group):
            obj.command = self.command_path.split(" ", 1)[1] if " " in self.command_path else self.command_path
            obj.migration = self.params.get("name") if isinstance(self.params.get("name"), str) else None
        return super().invoke(callback, *args, **kwargs)


def _record_commands(group: click.Group) -> None:
    for cmd in group.commands.values():
        cmd.context_class = _Recording
        if isinstance(cmd, click.Group):
            _record_commands(cmd)


_record_commands(cli)


def main(argv: list[str] | None = None) -> None:
    if os.environ.get(COMPLETE_VAR):  # the shell asks for completions (see `reshard completion`)
        cli.main(argv, prog_name="reshard", complete_var=COMPLETE_VAR)
        return
    args = list(argv if argv is not None else sys.argv[1:])
    ctx_holder: dict[str, Any] = {"json": "--json" in args}
    try:
        with cli.make_context("reshard", args) as ctx:
            ctx_holder["ctx"] = ctx
            cli.invoke(ctx)
        sys.exit(ExitCode.OK)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if ctx_holder["json"]:
            where = getattr(exc, "ctx", None)
            path = where.command_path.split(" ", 1)[1] if where is not None and " " in where.command_path else None
            _print_error(ctx_holder, exc.format_message(), ExitCode.BAD_INPUT, path)
        exc.show()
        sys.exit(ExitCode.BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except ReshardError as exc:
        _fail(ctx_holder, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug or an unforeseen failure: say so, keep the traceback
        import traceback

        traceback.print_exc()
        _fail(ctx_holder, f"internal error: {type(exc).__name__}: {exc}", ExitCode.ERROR)


def _print_error(ctx_holder: dict, message: str, code: ExitCode, command: str | None = None) -> None:
    """The error as a --json document: the envelope (command, migration, when, which config),
    then ``ok`` false, the message and the exit code with its documented name
    (schemas/cli/error.schema.json)."""
    ctx = ctx_holder.get("ctx")
    obj = ctx.obj if ctx is not None else None
    used = obj.config_used() if isinstance(obj, Ctx) else None
    doc = {"version": JSON_VERSION, "command": (obj.command if isinstance(obj, Ctx) else None) or command or "",
           "migration": obj.migration if isinstance(obj, Ctx) else None,
           "generated_at": datetime.now(UTC).isoformat(), **({"config_file": used} if used else {}),
           "ok": False, "error": message, "exit_code": int(code), "kind": code.name.lower()}
    click.echo(json.dumps(doc, indent=2))


def _fail(ctx_holder: dict, message: str, code: ExitCode) -> None:
    ctx = ctx_holder.get("ctx")
    obj = ctx.obj if ctx is not None else None
    used = obj.config_used() if isinstance(obj, Ctx) else None
    if (isinstance(obj, Ctx) and obj.json) or ctx_holder["json"]:
        _print_error(ctx_holder, message, code)
    where = f" (config: {used['path']})" if used and used["path"] not in message else ""
    click.echo(f"reshard: {message}{where}", err=True)
    sys.exit(int(code))
