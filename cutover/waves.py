"""Canary waves: cut over part of the moving keys first, the rest later.

A wave is a map version of its own: the routing map in force, with the wave's buckets
given to their new owners. Cutting a wave is then the same operation as cutting the
whole migration: a plan from the active map to the wave's map, whose moves are exactly
the keys that switch now. The last wave's map gives every moving bucket its new owner.

Waves need both maps to be hash maps with the same bucket count (buckets are the unit);
any other migration cuts over in one wave.
"""

from __future__ import annotations

from dataclasses import dataclass

from reshard.errors import ConfigError
from reshard.maps.planner import Plan, plan
from reshard.maps.shardmap import HashScheme, ShardMap, TableGroup, bucket_ranges_text


@dataclass(frozen=True)
class Wave:
    buckets: dict[str, list[int]] | None  # group -> buckets switching in this wave; None = every move
    map: ShardMap  # the routing map once this wave is cut
    plan: Plan  # active map -> wave map: exactly the keys that switch now
    last: bool  # after this wave every moving key is on its new owner

    def describe(self) -> str:
        if self.buckets is None:
            return "every moving key"
        return "; ".join(f"{g}: buckets {bucket_ranges_text(b)}" for g, b in sorted(self.buckets.items()))

    def to_dict(self) -> dict:
        return {"buckets": self.buckets, "last": self.last, "keys": self.describe(),
                "moves": [m.to_dict() for m in self.plan.moves]}


def _hash_groups(active: ShardMap, final: ShardMap) -> bool:
    for name, fg in final.groups.items():
        ag = active.groups.get(name)
        if not (isinstance(fg.scheme, HashScheme) and ag is not None and isinstance(ag.scheme, HashScheme)
                and ag.scheme.buckets == fg.scheme.buckets):
            return False
    return True


def remaining(active: ShardMap, final: ShardMap) -> dict[str, list[int]]:
    """Per group, the buckets whose owner in the active map differs from the final map."""
    out = {}
    for name, fg in final.groups.items():
        ag = active.groups[name]
        left = [b for b in range(fg.scheme.buckets) if ag.scheme.assignment[b] != fg.scheme.assignment[b]]
        if left:
            out[name] = left
    return out


def parse_only(spec: str, left: dict[str, list[int]], move_ids: dict[str, list[int]],
               buckets: int | None = None) -> dict[str, list[int]]:
    """--only: a fraction ("0.1", "10%"), bucket ranges ("0-511,900"), or move ids.

    A fraction takes that share of each group's remaining buckets (at least one);
    bucket ranges apply to every group; move ids take those moves' remaining buckets."""
    spec = spec.strip()
    try:
        frac = float(spec[:-1]) / 100 if spec.endswith("%") else float(spec)
        is_fraction = 0 < frac <= 1 and ("." in spec or spec.endswith("%") or spec == "1")
    except ValueError:
        is_fraction = False
    if is_fraction:
        return {g: b[: max(1, round(len(b) * frac))] for g, b in left.items()}
    if ":" in spec:
        out: dict[str, list[int]] = {}
        for mid in (s.strip() for s in spec.split(",") if s.strip()):
            if mid not in move_ids:
                raise ConfigError(f"--only: no move {mid!r} left to cut; remaining: {', '.join(sorted(move_ids))}")
            group = mid.split(":", 1)[0]
            out.setdefault(group, []).extend(move_ids[mid])
        return {g: sorted(set(b)) for g, b in out.items()}
    wanted: set[int] = set()
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            wanted.update(range(int(lo), int(hi if dash else lo) + 1))
        except ValueError:
            raise ConfigError(f"--only {spec!r}: expected a fraction (0.1, 10%), bucket ranges (0-511) "
                              "or move ids (group:source->target)") from None
    if buckets is not None and wanted and (min(wanted) < 0 or max(wanted) >= buckets):
        raise ConfigError(f"--only {spec!r}: buckets are numbered 0-{buckets - 1} in this map")
    picked = {g: [b for b in bs if b in wanted] for g, bs in left.items()}
    picked = {g: b for g, b in picked.items() if b}
    if not picked:
        raise ConfigError(f"--only {spec!r} selects no bucket that is still to be cut over")
    return picked


def next_wave(active: ShardMap, final: ShardMap, only: str | None) -> Wave:
    """The wave to cut now, from the routing map in force to (part of) the final map."""
    if not _hash_groups(active, final):
        if only:
            raise ConfigError("canary waves (--only) need hash maps with the same bucket count on both sides; "
                              "this migration cuts over in one wave")
        p = plan(active, final)
        return Wave(None, final, p, True)
    left = remaining(active, final)
    if not left:
        raise ConfigError("every moving key is already on its new owner")
    if only:
        move_ids: dict[str, list[int]] = {}
        for name, bs in left.items():
            ag, fg = active.groups[name].scheme, final.groups[name].scheme
            for b in bs:
                move_ids.setdefault(f"{name}:{ag.assignment[b]}->{fg.assignment[b]}", []).append(b)
        chosen = parse_only(only, left, move_ids, max(active.groups[g].scheme.buckets for g in left))
    else:
        chosen = left
    groups = {}
    for name, ag in active.groups.items():
        if name in chosen:
            pick = set(chosen[name])
            fa = final.groups[name].scheme.assignment
            assignment = tuple(fa[b] if b in pick else ag.scheme.assignment[b] for b in range(ag.scheme.buckets))
            groups[name] = TableGroup(name, ag.key_types, ag.tables,
                                      HashScheme(ag.scheme.buckets, assignment, ag.scheme.types))
        else:
            groups[name] = ag
    last = all(sorted(chosen.get(g, [])) == sorted(b) for g, b in left.items())
    wave_map = final if last else ShardMap(groups, name=f"{final.name or 'migration'} (wave)")
    return Wave(chosen, wave_map, plan(active, wave_map), last)
