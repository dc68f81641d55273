"""Sequences are not replicated by logical decoding: at cutover, bring the new owner's
sequences past the old owner's, so ids it hands out next were never used there."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from reshard.maps.shardmap import table_ident


def _last_value(sequence: str) -> sql.Composed:
    """``sequence`` is a name as pg_get_serial_sequence returns it: already quoted by the server."""
    return sql.SQL("SELECT last_value FROM {}").format(sql.SQL(sequence))


def owned_sequences(conn: psycopg.Connection[Any], tables: list[str]) -> dict[str, str]:
    """sequence -> table, for serial and identity columns of ``tables``."""
    out = {}
    for t in tables:
        name = table_ident(t).as_string(conn)
        for (seq,) in conn.execute(
            "SELECT pg_get_serial_sequence(%s, attname) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "AND pg_get_serial_sequence(%s, attname) IS NOT NULL",
            (name, name, name),
        ).fetchall():
            out[seq] = t
    return out


def last_values(conn: psycopg.Connection[Any], sequences: list[str]) -> dict[str, int]:
    return {s: int(conn.execute(_last_value(s)).fetchone()[0]) for s in sequences}


def bring_past(old: psycopg.Connection[Any], new: psycopg.Connection[Any], tables: list[str], gap: int = 1) -> dict[str, dict]:
    """setval each sequence on ``new`` to at least the old side's value + gap. Returns what it did."""
    seqs = owned_sequences(old, tables)
    src = last_values(old, list(seqs))
    done = {}
    for seq, value in src.items():
        row = new.execute("SELECT to_regclass(%s)", (seq,)).fetchone()
        if row[0] is None:
            continue
        current = int(new.execute(_last_value(seq)).fetchone()[0])
        wanted = max(current, value + gap)
        if wanted != current:
            new.execute("SELECT setval(%s, %s, true)", (seq, wanted))
        done[seq] = {"old_side": value, "was": current, "now": wanted}
    return done
