"""A migration is the difference between two map versions: a list of moves.

A move is ``(group, source cluster, target cluster)`` plus a key predicate that is
true exactly for the keys the source owns in the old map and the target owns in
the new one. The predicate is rendered in SQL per table (tables of a group name
their shard key columns differently) and evaluated in Python through the maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from reshard.errors import ConfigError
from reshard.maps.keyhash import column_hash, hash_combine64, partition_hash
from reshard.maps.shardmap import HashScheme, ShardMap, TableGroup, bucket_ranges_text, coerce_key, in_buckets


@dataclass(frozen=True)
class Move:
    group: str
    source: str
    target: str
    summary: str  # human description of the moving keys, e.g. "buckets 0-2047"

    @property
    def id(self) -> str:
        return f"{self.group}:{self.source}->{self.target}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "group": self.group, "source": self.source, "target": self.target, "keys": self.summary}


@dataclass(frozen=True)
class Plan:
    old: ShardMap
    new: ShardMap
    moves: tuple[Move, ...]
    # per table, the function that gives a key's (old owner, new owner): built once, called per change
    _owners: dict[str, Callable[[Sequence[Any]], tuple[str, str]]] = field(
        default_factory=dict, compare=False, repr=False)

    def sources(self) -> list[str]:
        return sorted({m.source for m in self.moves})

    def targets(self) -> list[str]:
        return sorted({m.target for m in self.moves})

    def moves_from(self, source: str) -> list[Move]:
        return [m for m in self.moves if m.source == source]

    def tables(self) -> list[str]:
        groups = {m.group for m in self.moves}
        return sorted(t for g in groups for t in self.new.groups[g].tables)

    def predicate_sql(self, move: Move, table: str, alias: str | None = None) -> sql.Composable:
        """SQL that is true exactly for ``table`` rows that this move carries."""
        old_g, new_g = self.old.groups[move.group], self.new.groups[move.group]
        if _same_buckets(old_g, new_g):
            buckets = [
                b for b in range(new_g.scheme.buckets)
                if old_g.scheme.assignment[b] == move.source and new_g.scheme.assignment[b] == move.target
            ]
            cols = new_g._cols(table, alias)
            return in_buckets(new_g.scheme.bucket_sql(cols), buckets)
        return sql.SQL("({} AND {})").format(old_g.predicate_sql(table, move.source, alias),
                                             new_g.predicate_sql(table, move.target, alias))

    def owners(self, table: str, key: Sequence[Any]) -> tuple[str, str]:
        """(old owner, new owner) of ``key``; between two hash maps the key is hashed once."""
        fn = self._owners.get(table)
        if fn is None:
            fn = self._owners[table] = _owners_of(self.old.group_of(table), self.new.group_of(table))
        return fn(key)

    def route(self, table: str, source: str, key: Sequence[Any]) -> str | None:
        """The target a change to ``key`` on ``source`` goes to, or None if it does not move."""
        old_owner, new_owner = self.owners(table, key)
        if old_owner != source or new_owner == source:
            return None
        return new_owner


def _owners_of(og: TableGroup, ng: TableGroup) -> Callable[[Sequence[Any]], tuple[str, str]]:
    """A table's owners function, its groups and schemes looked up once (the router and the
    applier call it for every change)."""
    if isinstance(og.scheme, HashScheme) and isinstance(ng.scheme, HashScheme) and og.key_types == ng.key_types:
        types = og.key_types
        old_owner, old_buckets = og.scheme.assignment, og.scheme.buckets
        new_owner, new_buckets = ng.scheme.assignment, ng.scheme.buckets

        if len(types) == 1:  # the usual single-column key: its column hash, folded once
            key_type = types[0]
            column = column_hash(key_type)

            def hashed_one(key: Sequence[Any]) -> tuple[str, str]:
                if len(key) != 1:
                    raise ConfigError(f"key {key!r} has {len(key)} values; the shard key has one column")
                h = hash_combine64(0, column(coerce_key(key[0], key_type)))
                return old_owner[h % old_buckets], new_owner[h % new_buckets]
            return hashed_one

        def hashed(key: Sequence[Any]) -> tuple[str, str]:
            h = partition_hash([coerce_key(v, t) for v, t in zip(key, types, strict=True)], types)
            return old_owner[h % old_buckets], new_owner[h % new_buckets]
        return hashed

    def each(key: Sequence[Any]) -> tuple[str, str]:
        return og.owner(key), ng.owner(key)
    return each


def _same_buckets(a: TableGroup, b: TableGroup) -> bool:
    return (
        isinstance(a.scheme, HashScheme)
        and isinstance(b.scheme, HashScheme)
        and a.scheme.buckets == b.scheme.buckets
        and a.scheme.types == b.scheme.types
    )


def _check_compatible(old: ShardMap, new: ShardMap) -> None:
    for name, ng in new.groups.items():
        og = old.groups.get(name)
        if og is None:
            raise ConfigError(f"group {name} is new in the target map; add it to the current map first")
        if og.tables != ng.tables:
            raise ConfigError(
                f"group {name}: the tables or their shard key columns differ between the maps "
                f"({og.tables} vs {ng.tables}); a migration moves keys, it does not change shard keys"
            )
        if og.key_types != ng.key_types:
            raise ConfigError(f"group {name}: the shard key type changed ({og.key_types} -> {ng.key_types})")
    for name in old.groups:
        if name not in new.groups:
            raise ConfigError(f"group {name} is missing from the target map")


def plan(old: ShardMap, new: ShardMap) -> Plan:
    """Every (group, source, target) whose key set is non-empty.

    Hash maps with the same bucket count are compared bucket by bucket. Any other
    pair of schemes (range -> hash, directory changes, a new bucket count) yields one
    candidate move per (old owner, new owner) pair, with the conjunction of the two
    ownership predicates; the server decides which rows match.
    """
    _check_compatible(old, new)
    moves: list[Move] = []
    for name in sorted(new.groups):
        og, ng = old.groups[name], new.groups[name]
        if _same_buckets(og, ng):
            pairs: dict[tuple[str, str], list[int]] = {}
            for b, (o, n) in enumerate(zip(og.scheme.assignment, ng.scheme.assignment)):
                if o != n:
                    pairs.setdefault((o, n), []).append(b)
            for (o, n), buckets in sorted(pairs.items()):
                moves.append(Move(name, o, n, f"buckets {bucket_ranges_text(buckets)} of {ng.scheme.buckets}"))
        elif og.scheme.to_dict() != ng.scheme.to_dict():
            for o in sorted(og.scheme.clusters()):
                for n in sorted(ng.scheme.clusters()):
                    if o != n:
                        moves.append(Move(name, o, n, f"keys owned by {o} in the old map and by {n} in the new"))
    return Plan(old, new, tuple(moves))


def overlap(a: Plan, b: Plan) -> str | None:
    """Why two migrations could move the same key, or None when their moves are disjoint.

    Exact for hash maps that share one bucket count (the moving buckets intersect or
    not); for any other pair of schemes a group moved by both counts as overlapping,
    because reshard cannot prove the two key sets disjoint.
    """
    reasons = []
    for name in sorted({m.group for m in a.moves} & {m.group for m in b.moves}):
        groups = (a.old.groups[name], a.new.groups[name], b.old.groups[name], b.new.groups[name])
        if all(_same_buckets(groups[0], g) for g in groups[1:]):
            moving_a = {i for i, (o, n) in enumerate(zip(groups[0].scheme.assignment, groups[1].scheme.assignment))
                        if o != n}
            moving_b = {i for i, (o, n) in enumerate(zip(groups[2].scheme.assignment, groups[3].scheme.assignment))
                        if o != n}
            both = sorted(moving_a & moving_b)
            if both:
                reasons.append(f"group {name}: both move buckets {bucket_ranges_text(both)} "
                               f"of {groups[0].scheme.buckets}")
        else:
            reasons.append(f"group {name}: both move keys of it and its schemes differ, so reshard "
                           "cannot prove the key sets disjoint")
    return "; ".join(reasons) or None
