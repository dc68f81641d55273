"""What every part of the control store shares: a connection, and the audit row each change writes."""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

ACTOR = f"{socket.gethostname()}:{os.getpid()}"


def actor() -> str:
    """Who acts: the OS user, host and pid, and the reshard command running (read from
    click's context when the CLI runs; a library caller such as an application's router
    never loads click for it)."""
    click = sys.modules.get("click")
    ctx = click.get_current_context(silent=True) if click is not None else None
    command = ctx.command_path if ctx is not None else ""
    return f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}" + (f" ({command})" if command else "")


class Records:
    """The base of the store's parts (ControlStore composes them): each part reaches the
    database through ``connect``, which inside a unit of work is the unit's transaction."""

    def connect(self, **kwargs: Any) -> psycopg.Connection[dict[str, Any]]:
        raise NotImplementedError  # ControlStore.connect

    def _audit(self, conn: psycopg.Connection[Any], migration: str | None, event: str, **detail: Any) -> None:
        """The audit row of a change, in the change's transaction."""
        conn.execute(
            "INSERT INTO reshard.audit_log (migration, actor, event, detail) VALUES (%s, %s, %s, %s)",
            (migration, ACTOR, event, Jsonb(json.loads(json.dumps(detail, default=str)))),
        )
