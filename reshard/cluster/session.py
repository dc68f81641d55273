"""Sessions reshard opens on a PostgreSQL server: named in errors, and noticed when they die."""

from __future__ import annotations

from typing import Any

import psycopg

from reshard.errors import Unavailable

# libpq settings every reshard session gets unless its DSN says otherwise: a server or a
# network path that goes away mid-session is noticed in about 20 s, not after the kernel's
# two hours (a frozen server process is not: its kernel still answers, see fence.HOLD_MS)
# application_name: reshard's sessions are told apart from the application's (the copy's throttle
# samples the application's transactions; operators see who is who in pg_stat_activity)
SESSION_DEFAULTS = {"application_name": "reshard", "connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "3",
                    "keepalives_count": "3", "tcp_user_timeout": "20000"}


def first_line(exc: BaseException) -> str:
    """A server error's first line (libpq's messages run on with hints and context), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(dsn: str, what: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """psycopg.connect that reports an unreachable server as Unavailable, naming it."""
    given = psycopg.conninfo.conninfo_to_dict(dsn)
    conninfo = psycopg.conninfo.make_conninfo(dsn, **{k: v for k, v in SESSION_DEFAULTS.items() if k not in given})
    try:
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to {what}: {first_line(exc)}") from None
