"""What a table looks like on a cluster, and whether two clusters agree about it.

Copy, apply and verify all depend on source and target tables having the same
columns with the same types and the same primary key; a difference is reported by
name (``SetupError``) before anything is written (invariant 7), never discovered
half-way through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from reshard.errors import SetupError
from reshard.maps.shardmap import table_ident


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), e.g. "numeric(12,2)", "timestamp with time zone"
    base_type: str  # the type without its modifier, e.g. "numeric": what values are cast to
    not_null: bool
    identity: str  # '' | 'a' (ALWAYS) | 'd' (BY DEFAULT)
    generated: bool
    has_default: bool = False

    @property
    def optional(self) -> bool:
        """A row may omit it: NULL or the default fills it, as in logical replication."""
        return not self.not_null or self.has_default or bool(self.identity)


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[Column, ...]
    pk: tuple[str, ...]
    replica_identity: str  # d(efault) | f(ull) | n(othing) | i(ndex)
    est_rows: int
    est_bytes: int

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def copyable(self) -> list[Column]:
        """Columns COPY and INSERT write (generated columns are computed by the target)."""
        return [c for c in self.columns if not c.generated]


def table_info(conn: psycopg.Connection[Any], table: str) -> TableInfo | None:
    row = conn.execute("SELECT to_regclass(%s)::oid", (table_ident(table).as_string(conn),)).fetchone()
    if row is None or row[0] is None:
        return None
    oid = row[0]
    cols = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), format_type(atttypid, NULL), attnotnull, "
        "attidentity::text, attgenerated <> '', atthasdef "
        "FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (oid,),
    ).fetchall()
    pk = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
        (oid,),
    ).fetchall()
    meta = conn.execute(
        "SELECT relreplident::text, greatest(reltuples, 0)::bigint, pg_table_size(oid) FROM pg_class WHERE oid = %s",
        (oid,),
    ).fetchone()
    return TableInfo(
        table,
        tuple(Column(n, t, bt, nn, ident or "", gen, hd) for n, t, bt, nn, ident, gen, hd in cols),
        tuple(r[0] for r in pk),
        meta[0],
        int(meta[1]),
        int(meta[2]),
    )


def require_table(conn: psycopg.Connection[Any], table: str, cluster: str) -> TableInfo:
    info = table_info(conn, table)
    if info is None:
        raise SetupError(f"table {table} does not exist on cluster {cluster}")
    return info


def check_source(info: TableInfo, cluster: str, shard_key: tuple[str, ...]) -> None:
    """A source table must let Debezium identify every changed row and route it."""
    if not info.pk:
        raise SetupError(
            f"{info.name} on {cluster} has no primary key: logical decoding cannot identify its updated and "
            "deleted rows, so reshard refuses to move it. Add a primary key."
        )
    if info.replica_identity == "n":
        raise SetupError(f"{info.name} on {cluster} has REPLICA IDENTITY NOTHING; use DEFAULT or FULL")
    missing = [c for c in shard_key if c not in info.pk]
    if missing:
        raise SetupError(
            f"{info.name}: shard key column(s) {', '.join(missing)} are not part of the primary key "
            f"({', '.join(info.pk)}); deletes carry only the key, so reshard could not route them"
        )


def check_compatible(src: TableInfo, tgt: TableInfo, src_cluster: str, tgt_cluster: str) -> None:
    """Same columns, same types, same order-independent names, same primary key."""
    problems: list[str] = []
    s = {c.name: c for c in src.columns}
    t = {c.name: c for c in tgt.columns}
    for name in s.keys() - t.keys():
        problems.append(f"column {name} ({s[name].type}) is missing on {tgt_cluster}")
    for name in t.keys() - s.keys():
        if t[name].not_null and not t[name].generated:
            problems.append(f"column {name} exists only on {tgt_cluster} and is NOT NULL")
        elif not t[name].generated:
            problems.append(f"column {name} exists only on {tgt_cluster}")
    for name in s.keys() & t.keys():
        if s[name].type != t[name].type:
            problems.append(f"column {name} is {s[name].type} on {src_cluster} but {t[name].type} on {tgt_cluster}")
    if src.pk != tgt.pk:
        problems.append(f"primary key is ({', '.join(src.pk)}) on {src_cluster} but ({', '.join(tgt.pk)}) on {tgt_cluster}")
    if problems:
        raise SetupError(f"{src.name}: source and target differ: " + "; ".join(problems))
