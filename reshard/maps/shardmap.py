"""Shard maps: which cluster owns each key of each sharded table.

A map is a set of *table groups*. A group's tables share a shard key type and
always move together (``accounts`` by ``id`` and ``orders`` by ``account_id``), and
the group has one *scheme*:

- ``hash``: the key's PostgreSQL partition hash (``reshard.maps.keyhash``) picks one of N
  virtual buckets (4096 by default); buckets are assigned to clusters as ranges,
  as ``modulo`` (bucket i -> i-th cluster: plain ``hash % N``), or as a ``ring``
  (consistent hashing with virtual nodes, computed into the same bucket table);
- ``range``: explicit ``[from, to)`` intervals on a single-column key;
- ``directory``: explicit key -> cluster entries with a default (tenants).

Every scheme answers the same two questions, identically: in Python (``owner``)
for the applier and the router, and in SQL (``predicate_sql``/``owner_sql``) for
``COPY (SELECT … WHERE …)``, verification and the shard-side fence.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from psycopg import sql
from pydantic import ValidationError

from reshard.errors import ConfigError
from reshard.maps import keyhash
from reshard.maps.shardmap_file import MAP_FORMAT, DirectorySection, HashSection, MapFile, RangeEntry
from reshard.validation import describe_errors

DEFAULT_BUCKETS = 4096
_IDENT = re.compile(r"^[a-z_][a-z0-9_$]*$")


# ---- SQL helpers ---------------------------------------------------------------

def table_ident(table: str) -> sql.Identifier:
    """A ``schema.table`` name as an identifier (maps and configs name tables that way)."""
    schema, _, rel = table.partition(".")
    return sql.Identifier(schema, rel)


def column(name: str, alias: str | None = None) -> sql.Composable:
    """A key column, qualified by ``alias`` when given. The alias is SQL the caller wrote
    (``t``, or ``NEW``/``OLD`` in a trigger, which must stay unquoted), never data."""
    return sql.SQL("{}.{}").format(sql.SQL(alias), sql.Identifier(name)) if alias else sql.Identifier(name)


def key_literal(value: Any, key_type: str) -> sql.Composable:
    """A constant of the key type, inlined as a literal (maps are data, not SQL)."""
    if key_type in ("smallint", "integer", "bigint"):
        value = int(value)
    elif key_type == "uuid":
        value = uuid.UUID(str(value))
    else:
        value, key_type = str(value), "text"
    return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(key_type))


def _or(parts: list[sql.Composable]) -> sql.Composable:
    return parts[0] if len(parts) == 1 else sql.SQL("({})").format(sql.SQL(" OR ").join(parts))


def coerce_key(value: Any, key_type: str) -> Any:
    """Normalize a key value from YAML, JSON or a client to the Python type we hash."""
    try:
        if key_type in ("smallint", "integer", "bigint"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if key_type == "uuid":
            return uuid.UUID(str(value))
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"key value {value!r} is not a valid {key_type}") from None


def _runs(buckets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted buckets as half-open runs [lo, hi)."""
    runs: list[tuple[int, int]] = []
    for b in sorted(set(buckets)):
        if runs and runs[-1][1] == b:
            runs[-1] = (runs[-1][0], b + 1)
        else:
            runs.append((b, b + 1))
    return runs


def multirange(buckets: Iterable[int]) -> sql.Composable:
    """A bucket set as an int4multirange literal: compact and O(log n) to test."""
    text = "{" + ",".join(f"[{lo},{hi})" for lo, hi in _runs(buckets)) + "}"
    return sql.SQL("{}::int4multirange").format(sql.Literal(text))


def in_buckets(bucket: sql.Composable, buckets: Iterable[int]) -> sql.Composable:
    """True when the bucket expression falls in the set."""
    return sql.SQL("({} <@ {})").format(bucket, multirange(buckets))


TRUE, FALSE = sql.SQL("true"), sql.SQL("false")


def bucket_ranges_text(buckets: Iterable[int]) -> str:
    """A bucket set the way maps write it: '0-2047,3000'."""
    return ",".join(str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in _runs(buckets))


# ---- schemes -----------------------------------------------------------------

class Scheme(Protocol):
    @property
    def kind(self) -> str: ...

    def owner(self, key: Sequence[Any]) -> str: ...
    def clusters(self) -> set[str]: ...
    def predicate_sql(self, cols: Sequence[sql.Composable], types: Sequence[str], cluster: str) -> sql.Composable: ...
    def owner_sql(self, cols: Sequence[sql.Composable], types: Sequence[str]) -> sql.Composable: ...
    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class HashScheme:
    """Buckets 0..N-1 by partition hash; ``assignment[b]`` owns bucket b."""

    buckets: int
    assignment: tuple[str, ...]
    types: tuple[str, ...]
    source: dict = field(default_factory=dict, compare=False)  # the YAML form, kept for display
    kind: str = "hash"

    def bucket_of(self, key: Sequence[Any]) -> int:
        return keyhash.bucket(key, self.types, self.buckets)

    def owner(self, key: Sequence[Any]) -> str:
        return self.assignment[self.bucket_of(key)]

    def clusters(self) -> set[str]:
        return set(self.assignment)

    def buckets_of(self, cluster: str) -> list[int]:
        return [b for b, c in enumerate(self.assignment) if c == cluster]

    def bucket_sql(self, cols: Sequence[sql.Composable]) -> sql.Composable:
        return keyhash.sql_bucket(cols, self.types, self.buckets)

    def predicate_sql(self, cols: Sequence[sql.Composable], types: Sequence[str], cluster: str) -> sql.Composable:
        mine = self.buckets_of(cluster)
        if not mine:
            return FALSE
        if len(mine) == self.buckets:
            return TRUE
        return in_buckets(self.bucket_sql(cols), mine)

    def owner_sql(self, cols: Sequence[sql.Composable], types: Sequence[str]) -> sql.Composable:
        whens = sql.SQL(" ").join(
            sql.SQL("WHEN b.v <@ {} THEN {}").format(multirange(self.buckets_of(c)), sql.Literal(c))
            for c in sorted(self.clusters())
        )
        return sql.SQL("(SELECT CASE {} END FROM (SELECT {} AS v) b)").format(whens, self.bucket_sql(cols))

    def to_dict(self) -> dict:
        if self.source:
            return {"hash": self.source}
        per: dict[str, str] = {}
        for c in sorted(self.clusters()):
            per[c] = bucket_ranges_text(self.buckets_of(c))
        return {"hash": {"buckets": self.buckets, "clusters": per}}


def ring_assignment(clusters: Sequence[str], vnodes: int, buckets: int) -> tuple[str, ...]:
    """Consistent hashing with virtual nodes, expressed as a bucket table.

    Each cluster gets ``vnodes`` points on a 2**32 ring (hash of "cluster#i"); bucket
    b sits at position b * 2**32 / buckets and belongs to the first point clockwise.
    Adding a cluster takes over only the buckets just before its new points, about
    1/(n+1) of them, which is what the planner shows.
    """
    points: list[tuple[int, str]] = []
    for c in clusters:
        for i in range(vnodes):
            h = keyhash.hashtextextended(f"{c}#{i}", keyhash.PARTITION_SEED) >> 32
            points.append((h, c))
    points.sort()
    positions = [p for p, _ in points]
    out = []
    for b in range(buckets):
        pos = (b << 32) // buckets
        i = bisect.bisect_left(positions, pos)
        out.append(points[i % len(points)][1])
    return tuple(out)


@dataclass(frozen=True)
class RangeScheme:
    """Half-open intervals [lo, hi) on a single-column key; None is unbounded."""

    bounds: tuple[tuple[Any, Any, str], ...]  # (lo, hi, cluster), sorted, contiguous
    types: tuple[str, ...]
    kind: str = "range"

    @functools.cached_property
    def _los(self) -> list[Any]:
        """The intervals' lower bounds after the first, for bisect (computed once, not per key)."""
        return [lo for lo, _hi, _c in self.bounds[1:]]

    def owner(self, key: Sequence[Any]) -> str:
        return self.bounds[bisect.bisect_right(self._los, key[0])][2]

    def clusters(self) -> set[str]:
        return {c for _lo, _hi, c in self.bounds}

    def _interval_sql(self, col: sql.Composable, lo: Any, hi: Any) -> sql.Composable:
        t = self.types[0]
        key = sql.SQL('{} COLLATE "C"').format(col) if t == "text" else col
        parts = []
        if lo is not None:
            parts.append(sql.SQL("{} >= {}").format(key, key_literal(lo, t)))
        if hi is not None:
            parts.append(sql.SQL("{} < {}").format(key, key_literal(hi, t)))
        return sql.SQL("({})").format(sql.SQL(" AND ").join(parts)) if parts else TRUE

    def predicate_sql(self, cols: Sequence[sql.Composable], types: Sequence[str], cluster: str) -> sql.Composable:
        mine = [self._interval_sql(cols[0], lo, hi) for lo, hi, c in self.bounds if c == cluster]
        return _or(mine) if mine else FALSE

    def owner_sql(self, cols: Sequence[sql.Composable], types: Sequence[str]) -> sql.Composable:
        whens = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(self._interval_sql(cols[0], lo, hi), sql.Literal(c))
                                  for lo, hi, c in self.bounds)
        return sql.SQL("(CASE {} END)").format(whens)

    def to_dict(self) -> dict:
        out = []
        for lo, hi, c in self.bounds:
            entry: dict[str, Any] = {"cluster": c}
            if lo is not None:
                entry["from"] = str(lo) if isinstance(lo, uuid.UUID) else lo
            if hi is not None:
                entry["to"] = str(hi) if isinstance(hi, uuid.UUID) else hi
            out.append(entry)
        return {"range": out}


@dataclass(frozen=True)
class DirectoryScheme:
    """Explicit key -> cluster entries; every other key belongs to ``default``."""

    entries: dict  # key -> cluster
    default: str
    types: tuple[str, ...]
    kind: str = "directory"

    def owner(self, key: Sequence[Any]) -> str:
        return self.entries.get(key[0], self.default)

    def clusters(self) -> set[str]:
        return set(self.entries.values()) | {self.default}

    def _in(self, col: sql.Composable, keys: list[Any]) -> sql.Composable:
        t = self.types[0]
        return sql.SQL("{} IN ({})").format(col, sql.SQL(", ").join(key_literal(k, t) for k in sorted(keys, key=str)))

    def predicate_sql(self, cols: Sequence[sql.Composable], types: Sequence[str], cluster: str) -> sql.Composable:
        col = cols[0]
        mine = [k for k, c in self.entries.items() if c == cluster]
        others = [k for k, c in self.entries.items() if c != cluster]
        if cluster == self.default:
            return sql.SQL("(NOT {})").format(self._in(col, others)) if others else TRUE
        return self._in(col, mine) if mine else FALSE

    def owner_sql(self, cols: Sequence[sql.Composable], types: Sequence[str]) -> sql.Composable:
        by_cluster: dict[str, list[Any]] = {}
        for k, c in self.entries.items():
            by_cluster.setdefault(c, []).append(k)
        whens = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(self._in(cols[0], ks), sql.Literal(c))
                                  for c, ks in sorted(by_cluster.items()))
        return sql.SQL("(CASE {} ELSE {} END)").format(whens, sql.Literal(self.default))

    def to_dict(self) -> dict:
        entries = {str(k): c for k, c in sorted(self.entries.items(), key=lambda kv: str(kv[0]))}
        return {"directory": {"default": self.default, "entries": entries}}


# ---- the map -----------------------------------------------------------------

@dataclass(frozen=True)
class TableGroup:
    name: str
    key_types: tuple[str, ...]
    tables: dict  # "schema.table" -> tuple of shard-key column names
    scheme: Any  # a Scheme

    def key_columns(self, table: str) -> tuple[str, ...]:
        return self.tables[table]

    def owner(self, key: Sequence[Any]) -> str:
        return self.scheme.owner([coerce_key(v, t) for v, t in zip(key, self.key_types, strict=True)])

    def predicate_sql(self, table: str, cluster: str, alias: str | None = None) -> sql.Composable:
        return self.scheme.predicate_sql(self._cols(table, alias), self.key_types, cluster)

    def owner_sql(self, table: str, alias: str | None = None) -> sql.Composable:
        return self.scheme.owner_sql(self._cols(table, alias), self.key_types)

    def _cols(self, table: str, alias: str | None) -> list[sql.Composable]:
        return [column(c, alias) for c in self.tables[table]]


@dataclass(frozen=True)
class ShardMap:
    groups: dict  # name -> TableGroup
    name: str = ""

    def group_of(self, table: str) -> TableGroup:
        for g in self.groups.values():
            if table in g.tables:
                return g
        raise ConfigError(f"table {table} is not in the shard map")

    def tables(self) -> list[str]:
        return sorted(t for g in self.groups.values() for t in g.tables)

    def clusters(self) -> set[str]:
        return set().union(*(g.scheme.clusters() for g in self.groups.values())) if self.groups else set()

    def owner(self, table: str, key: Sequence[Any]) -> str:
        return self.group_of(table).owner(key)

    def to_dict(self) -> dict:
        groups = {}
        for g in self.groups.values():
            groups[g.name] = {
                "key": list(g.key_types) if len(g.key_types) > 1 else g.key_types[0],
                "tables": {t: list(cols) for t, cols in g.tables.items()},
                **g.scheme.to_dict(),
            }
        out: dict[str, Any] = {"format": MAP_FORMAT}
        if self.name:
            out["name"] = self.name
        out["groups"] = groups
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- parsing and validation ------------------------------------------------------

def _table_name(name: str, where: str) -> str:
    name = str(name).strip()
    schema, dot, rel = name.partition(".")
    if not dot:
        schema, rel = "public", name
    for part in (schema, rel):
        if not _IDENT.match(part):
            raise ConfigError(f"{where}: table name {name!r} must be schema.table in lowercase identifiers")
    return f"{schema}.{rel}"


def _parse_buckets(spec: Any, n: int, where: str) -> list[int]:
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        lo_s, dash, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
        except ValueError:
            raise ConfigError(f"{where}: bucket list {spec!r} must look like '0-2047,3000'") from None
        if lo > hi or lo < 0 or hi >= n:
            raise ConfigError(f"{where}: bucket range {part!r} is outside 0-{n - 1} or reversed")
        out.extend(range(lo, hi + 1))
    return out


def _parse_hash(spec: HashSection, types: tuple[str, ...], where: str) -> HashScheme:
    raw = spec.model_dump(exclude_defaults=True)  # as written: the map round-trips to the same digest
    if spec.modulo is not None:
        n = spec.buckets or len(spec.modulo)
        if n != len(spec.modulo):
            raise ConfigError(f"{where}: hash.modulo lists {len(spec.modulo)} clusters but buckets is {n}")
        return HashScheme(n, tuple(spec.modulo), types, raw)
    n = spec.buckets or DEFAULT_BUCKETS
    if spec.ring is not None:
        if len(set(spec.ring.clusters)) != len(spec.ring.clusters):
            raise ConfigError(f"{where}: hash.ring lists a cluster twice")
        return HashScheme(n, ring_assignment(spec.ring.clusters, spec.ring.vnodes, n), types, raw)
    assert spec.clusters is not None  # the file's shape allows exactly one form
    owner: list[str | None] = [None] * n
    for cluster, ranges in spec.clusters.items():
        for b in _parse_buckets(ranges, n, f"{where}: hash.clusters.{cluster}"):
            if owner[b] is not None:
                raise ConfigError(f"{where}: bucket {b} is assigned to both {owner[b]} and {cluster} (overlap)")
            owner[b] = cluster
    missing = [b for b, c in enumerate(owner) if c is None]
    if missing:
        raise ConfigError(
            f"{where}: {len(missing)} of {n} buckets are unassigned (first: {bucket_ranges_text(missing[:50])}); "
            "every bucket needs an owner"
        )
    return HashScheme(n, tuple(owner), types, raw)  # type: ignore[arg-type]


def _parse_range(spec: list[RangeEntry], types: tuple[str, ...], where: str) -> RangeScheme:
    if len(types) != 1:
        raise ConfigError(f"{where}: a range map needs a single-column shard key")
    t = types[0]
    items = []
    for i, e in enumerate(spec):
        lo = coerce_key(e.lower, t) if e.lower is not None else None
        hi = coerce_key(e.upper, t) if e.upper is not None else None
        if lo is not None and hi is not None and not lo < hi:
            raise ConfigError(f"{where}: range entry {i} ({e.cluster}) is empty: from {lo} is not below to {hi}")
        items.append((lo, hi, e.cluster))
    # sort by lower bound, unbounded first
    items.sort(key=lambda x: (x[0] is not None, x[0] if x[0] is not None else 0))
    if items[0][0] is not None:
        raise ConfigError(f"{where}: keys below {items[0][0]} have no owner (gap): the first range needs no 'from'")
    if items[-1][1] is not None:
        raise ConfigError(f"{where}: keys from {items[-1][1]} up have no owner (gap): the last range needs no 'to'")
    for (_lo1, hi1, c1), (lo2, _hi2, c2) in zip(items, items[1:]):
        if lo2 is None:
            raise ConfigError(f"{where}: two ranges ({c1}, {c2}) both start at -infinity (overlap)")
        if hi1 is None or hi1 > lo2:
            raise ConfigError(f"{where}: ranges of {c1} and {c2} overlap at {lo2}")
        if hi1 < lo2:
            raise ConfigError(f"{where}: keys in [{hi1}, {lo2}) have no owner (gap between {c1} and {c2})")
    return RangeScheme(tuple(items), types)


def _parse_directory(spec: DirectorySection, types: tuple[str, ...], where: str) -> DirectoryScheme:
    if len(types) != 1:
        raise ConfigError(f"{where}: a directory map needs a single-column shard key")
    entries = {}
    for k, c in spec.entries.items():
        key = coerce_key(k, types[0])
        if key in entries:
            raise ConfigError(f"{where}: directory lists key {k!r} twice")
        entries[key] = c
    return DirectoryScheme(entries, spec.default, types)


def parse_map(data: Any, known_clusters: Iterable[str] | None = None, where: str = "shard map") -> ShardMap:
    """Build and validate a map: first the file's shape (``reshard.maps.shardmap_file``), then
    what it means. Every error names the file, the path in it and the problem."""
    try:
        f = MapFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, where, MapFile)) from None
    groups: dict[str, TableGroup] = {}
    seen_tables: dict[str, str] = {}
    for gname, g in f.groups.items():
        w = f"{where}: groups.{gname}"
        try:
            types = tuple(keyhash.normalize_type(t) for t in (g.key if isinstance(g.key, list) else [g.key]))
        except ValueError as exc:
            raise ConfigError(f"{w}.key: {exc}") from None
        tables: dict[str, tuple[str, ...]] = {}
        for tname, cols in g.tables.items():
            t = _table_name(tname, w)
            cols_t = tuple(cols if isinstance(cols, list) else [cols])
            if len(cols_t) != len(types):
                raise ConfigError(f"{w}: table {t} names {len(cols_t)} shard key column(s) but the key has {len(types)}")
            if t in seen_tables:
                raise ConfigError(f"{w}: table {t} is already in group {seen_tables[t]}")
            seen_tables[t] = gname
            tables[t] = cols_t
        scheme: Scheme
        if g.hash is not None:
            scheme = _parse_hash(g.hash, types, w)
        elif g.range is not None:
            scheme = _parse_range(g.range, types, w)
        else:
            assert g.directory is not None  # the file's shape allows exactly one scheme
            scheme = _parse_directory(g.directory, types, w)
        if known_clusters is not None:
            unknown = scheme.clusters() - set(known_clusters)
            if unknown:
                raise ConfigError(
                    f"{w}: unknown cluster(s) {', '.join(sorted(unknown))} "
                    f"(reshard.yaml defines: {', '.join(sorted(known_clusters)) or 'none'})"
                )
        groups[gname] = TableGroup(gname, types, tables, scheme)
    return ShardMap(groups, f.name)


def load_map(path: str | Path, known_clusters: Iterable[str] | None = None) -> ShardMap:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"shard map {p} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"shard map {p}: not valid YAML: {exc}") from None
    return parse_map(data, known_clusters, where=str(p))
