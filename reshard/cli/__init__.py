"""The `reshard` command: a thin layer over the library.

Each command parses its options, calls one library function, and prints the result:
for people on stderr/stdout, or with ``--json`` one versioned JSON document on stdout
and nothing else there. Progress goes to stderr. Typed errors become one line and
the exit code documented in reshard/exit_codes.py.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from reshard.cli import ddl, maps, migration, stack, switch  # noqa: F401  (they register their commands)
from reshard.cli.context import JSON_VERSION, Ctx
from reshard.cli.root import cli
from reshard.errors import ReshardError
from reshard.exit_codes import ExitCode

__all__ = ["cli", "main"]


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
