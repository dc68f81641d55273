"""A table's definition read from the source's catalog, as statements a target runs.

The server renders every piece itself (``format_type``, ``pg_get_expr``,
``pg_get_constraintdef``, ``pg_get_indexdef``, ``pg_get_triggerdef``), so the statements
are the source major's own SQL, which a target of the same or a newer major accepts, and
no client tool of a matching version (``pg_dump``) is needed on the host. In three parts,
as pgcopydb orders a copy: the table itself (columns, types, collations, defaults, NOT
NULL, identity and generated columns, CHECK constraints, the sequences its serial
columns own) and its primary key before the copy; the rest (secondary indexes, unique,
exclusion and foreign-key constraints, triggers other than reshard's) after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reshard.errors import SetupError
from reshard.maps.shardmap import table_ident

Statement = sql.SQL | sql.Composed  # what a connection executes


@dataclass
class TableDDL:
    table: str
    pre: list[Statement] = field(default_factory=list)  # sequences, the table, its CHECKs, sequence ownership
    primary_key: list[Statement] = field(default_factory=list)
    post: list[Statement] = field(default_factory=list)  # indexes, other constraints, triggers


COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
       pg_get_expr(d.adbin, d.adrelid),
       CASE WHEN a.attcollation <> t.typcollation THEN quote_ident(n.nspname) || '.' || quote_ident(c.collname) END,
       pg_get_serial_sequence(%(table)s, a.attname)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation c ON c.oid = a.attcollation
LEFT JOIN pg_namespace n ON n.oid = c.collnamespace
WHERE a.attrelid = %(table)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

SEQUENCE = """
SELECT format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle
FROM pg_sequence s WHERE s.seqrelid = %s::regclass
"""

CONSTRAINTS = """
SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = %s::regclass AND contype IN ('c', 'p', 'u', 'x', 'f') ORDER BY contype, conname
"""

INDEXES = """
SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
WHERE i.indrelid = %s::regclass
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
ORDER BY i.indexrelid::regclass::text
"""

TRIGGERS = """
SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal AND n.nspname <> 'reshard' ORDER BY t.tgname
"""


def _column(row: tuple, owned: dict[str, str]) -> sql.Composable:
    name, typ, notnull, identity, generated, default, collation, serial = row
    parts: list[sql.Composable] = [sql.Identifier(name), sql.SQL(typ)]  # typ, default, collation: the server's SQL
    if collation:
        parts.append(sql.SQL("COLLATE {}").format(sql.SQL(collation)))
    if generated:
        parts.append(sql.SQL("GENERATED ALWAYS AS ({}) {}").format(
            sql.SQL(default), sql.SQL("VIRTUAL" if generated == "v" else "STORED")))
    elif identity:
        parts.append(sql.SQL("GENERATED {} AS IDENTITY").format(sql.SQL("ALWAYS" if identity == "a" else "BY DEFAULT")))
    elif default is not None:
        parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(default)))
    if notnull and not identity:
        parts.append(sql.SQL("NOT NULL"))
    if serial and not identity:
        owned[name] = serial
    return sql.SQL(" ").join(parts)


def _sequence(conn: psycopg.Connection[Any], name: str) -> Statement:
    row = conn.execute(SEQUENCE, (name,)).fetchone()
    assert row is not None  # pg_get_serial_sequence named it
    typ, start, inc, lo, hi, cache, cycle = row
    return sql.SQL("CREATE SEQUENCE {} AS {} START WITH {} INCREMENT BY {} MINVALUE {} MAXVALUE {} CACHE {}{}").format(
        sql.SQL(name), sql.SQL(typ), sql.Literal(start), sql.Literal(inc), sql.Literal(lo), sql.Literal(hi),
        sql.Literal(cache), sql.SQL(" CYCLE" if cycle else ""))


def read(conn: psycopg.Connection[Any], table: str) -> TableDDL:
    """The definition of ``table`` on the cluster ``conn`` is connected to. Read with an
    empty search_path, as pg_dump does, so every name in a rendered expression (a serial
    column's ``nextval('schema.seq')``, a type, a function) comes schema-qualified."""
    with conn.transaction():
        conn.execute("SELECT set_config('search_path', '', true)")
        return _read(conn, table)


def _read(conn: psycopg.Connection[Any], table: str) -> TableDDL:
    ident = table_ident(table)
    name = ident.as_string(conn)
    if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None:
        raise SetupError(f"{table} does not exist on the source")
    out = TableDDL(table)
    owned: dict[str, str] = {}  # column -> the sequence it owns (serial columns)
    columns = [_column(r, owned) for r in conn.execute(COLUMNS, {"table": name}).fetchall()]
    out.pre += [_sequence(conn, seq) for seq in owned.values()]  # sequence names: quoted by the server
    out.pre.append(sql.SQL("CREATE TABLE {} (\n    {}\n)").format(ident, sql.SQL(",\n    ").join(columns)))
    for column, seq in owned.items():
        out.pre.append(sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(sql.SQL(seq), ident, sql.Identifier(column)))
    for conname, contype, definition in conn.execute(CONSTRAINTS, (name,)).fetchall():
        statement = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(ident, sql.Identifier(conname),
                                                                          sql.SQL(definition))
        {"c": out.pre, "p": out.primary_key}.get(contype, out.post).append(statement)
    out.post += [sql.SQL(r[0]) for r in conn.execute(INDEXES, (name,)).fetchall()]
    out.post += [sql.SQL(r[0]) for r in conn.execute(TRIGGERS, (name,)).fetchall()]
    return out
