"""What every command shares: the context object, the --json envelope and output, option parsers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import click

from reshard.config import Config, load_config
from reshard.json_schemas import check_if_asked
from reshard.observe.progress import Progress

JSON_VERSION = 1


class Ctx:
    def __init__(self, config_path: str | None, progress_mode: str, log_format: str = "text"):
        self.config_path = config_path
        # with JSON logs, progress goes through the log too: stderr holds only JSON lines
        self.progress_mode = "log" if log_format == "json" and progress_mode != "off" else progress_mode
        self.json = False
        self.loaded: Config | None = None  # the config this command read: named in --json output and errors
        self.command: str | None = None  # the command running ("ddl list"), for error documents
        self.migration: str | None = None  # the migration it runs on, if any

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


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


class Size(click.ParamType):
    """A size option: ``512MB``, ``10GB``, ``1GiB`` (powers of 1024 either way), or plain bytes."""

    name = "size"
    UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
             "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", str(value).strip().lower())
        if not m or m[2] not in self.UNITS or float(m[1]) <= 0:
            self.fail(f"{value!r}: write a size such as 512MB or 10GB", param, ctx)
        return int(float(m[1]) * self.UNITS[m[2]])

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "SIZE"


class Duration(click.ParamType):
    """A time option: ``500ms``, ``30s``, ``5m``, ``2h``, or a plain number in ``per`` (seconds
    unless the option says otherwise). The value is returned in ``per``; at least ``min``."""

    name = "duration"
    UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    def __init__(self, per: str = "s", min: float = 0.0, allow_zero: bool = False):
        self.per, self.min, self.allow_zero = per, min, allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)):
            return value
        text = str(value).strip().lower()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?", text)
        if not m:
            self.fail(f"{value!r}: write a duration such as 500ms, 30s, 5m or 2h", param, ctx)
        seconds = float(m[1]) * self.UNITS[m[2] or self.per]
        out = seconds / self.UNITS[self.per]
        if out < self.min or (out == 0 and not self.allow_zero):
            self.fail(f"{value!r}: must be at least {self.min:g}{self.per}" if self.min else
                      f"{value!r}: must be more than 0", param, ctx)
        return int(out) if self.per == "ms" else out

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"


def confirm(yes: bool, question: str) -> None:
    """Ask before a destructive step; without a terminal, only --yes goes on (a job must say so)."""
    import sys

    from reshard.errors import ConfigError

    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} Not asking without a terminal: pass --yes")
    if not click.confirm(question, default=False, err=True):
        raise click.exceptions.Abort()
