"""What every command shares: the context object, the --json envelope and output, option parsers."""

from __future__ import annotations

import json
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
