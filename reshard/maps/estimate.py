"""How many rows and bytes a move carries, from the servers' statistics (no scans).

A source's copy of a table holds exactly the keys the old map gives it, so the rows a
move S -> T carries are the rows on S whose new owner is T:

- when the new scheme is a hash, that is rows(S) x P(new owner T | old owner S). The
  partition hash spreads keys uniformly, so the probability is bucket arithmetic:
  the share of S's old buckets that T gets (same bucket count), the joint residues of
  the two moduli (different bucket counts, e.g. ``hash % 4`` -> ``hash % 5``), or T's
  share of the new buckets when the old scheme was not a hash at all;
- otherwise (range, directory) the server's planner estimates the new predicate on S
  (EXPLAIN uses the column's histogram and most-common values).

Bytes are rows times the table's average on-disk row size on that cluster.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reshard.cluster.catalog import TableInfo, table_info
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.maps.planner import Move, Plan
from reshard.maps.shardmap import HashScheme, table_ident

EXACT_LCM_LIMIT = 2_000_000
SAMPLES = 200_000


def _explain_rows(conn: psycopg.Connection[Any], query: sql.Composable) -> int:
    row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query)).fetchone()
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return int(doc[0]["Plan"]["Plan Rows"])


def table_rows(conn: psycopg.Connection[Any], info: TableInfo) -> int:
    """reltuples, or the planner's page-based guess for a never-analyzed table."""
    if info.est_rows > 0:
        return info.est_rows
    return _explain_rows(conn, sql.SQL("SELECT 1 FROM {}").format(table_ident(info.name)))


def hash_fraction(old, new, source: str, target: str) -> float | None:
    """P(new owner = target | old owner = source) for uniformly hashed keys, or None
    when the new scheme is not a hash (then the server estimates)."""
    if not isinstance(new, HashScheme):
        return None
    if not isinstance(old, HashScheme):
        return new.assignment.count(target) / new.buckets
    if old.types != new.types:
        return new.assignment.count(target) / new.buckets  # independent hashes of the same key
    n1, n2 = old.buckets, new.buckets
    if n1 == n2:
        mine = [b for b in range(n1) if old.assignment[b] == source]
        return sum(1 for b in mine if new.assignment[b] == target) / len(mine) if mine else 0.0
    # the row hash h is uniform over 2**64; (h mod n1, h mod n2) is uniform over the
    # residues mod lcm(n1, n2) (up to a 2**-64 bias), so count them when that is cheap
    lcm = n1 * n2 // math.gcd(n1, n2)
    if lcm <= EXACT_LCM_LIMIT:
        both = own = 0
        for r in range(lcm):
            if old.assignment[r % n1] == source:
                own += 1
                both += new.assignment[r % n2] == target
        return both / own if own else 0.0
    rng = random.Random(f"{n1}/{n2}/{source}/{target}")
    both = own = 0
    for _ in range(SAMPLES):
        h = rng.getrandbits(64)
        if old.assignment[h % n1] == source:
            own += 1
            both += new.assignment[h % n2] == target
    return both / own if own else 0.0


def move_rows(conn: psycopg.Connection[Any], p: Plan, move: Move, info: TableInfo) -> int:
    """Rows of ``info`` (on the move's source) that the move carries."""
    total = table_rows(conn, info)
    frac = hash_fraction(p.old.groups[move.group].scheme, p.new.groups[move.group].scheme, move.source, move.target)
    if frac is not None:
        return round(total * frac)
    if total == 0:
        return 0
    pred = p.new.groups[move.group].predicate_sql(info.name, move.target)
    return min(total, _explain_rows(conn, sql.SQL("SELECT 1 FROM {} WHERE {}").format(table_ident(info.name), pred)))


def row_bytes(info: TableInfo, rows: int) -> int:
    """Bytes for ``rows`` rows at the table's average on-disk row size."""
    if info.est_rows <= 0:
        return 0
    return round(info.est_bytes * rows / info.est_rows)


@dataclass
class MoveEstimate:
    move: Move
    table: str
    rows: int
    bytes: int
    predicate: str

    def to_dict(self) -> dict:
        return {**self.move.to_dict(), "table": self.table, "rows": self.rows, "bytes": self.bytes,
                "predicate": self.predicate}


@dataclass
class PlanEstimate:
    moves: list[MoveEstimate] = field(default_factory=list)
    total_rows: int = 0
    total_bytes: int = 0
    missing: list[str] = field(default_factory=list)  # "cluster/table" that does not exist there
    unanalyzed: list[str] = field(default_factory=list)  # "cluster/table" never analyzed: rows guessed from pages

    @property
    def moving_rows(self) -> int:
        return sum(m.rows for m in self.moves)

    @property
    def moving_bytes(self) -> int:
        return sum(m.bytes for m in self.moves)

    @property
    def fraction(self) -> float | None:
        """Share of the moving groups' data that moves (bytes, or rows if sizes are unknown
        or a table was never analyzed: its bytes per row are unknown, its rows guessed)."""
        if self.total_bytes > 0 and not self.unanalyzed:
            return self.moving_bytes / self.total_bytes
        if self.total_rows > 0:
            return self.moving_rows / self.total_rows
        return None

    def to_dict(self) -> dict:
        return {"moves": [m.to_dict() for m in self.moves], "total_rows": self.total_rows,
                "total_bytes": self.total_bytes, "moving_rows": self.moving_rows,
                "moving_bytes": self.moving_bytes, "fraction": self.fraction, "missing": self.missing,
                "unanalyzed": self.unanalyzed}


def estimate_plan(config: Config, p: Plan) -> PlanEstimate:
    """Per move and table: rows and bytes, plus the totals of every old owner's tables."""
    out = PlanEstimate()
    groups = sorted({m.group for m in p.moves})
    owners = sorted({c for g in groups for c in p.old.groups[g].scheme.clusters()})
    infos: dict[tuple[str, str], TableInfo | None] = {}
    for cluster in owners:
        with connect(config.cluster(cluster).dsn, f"cluster {cluster}") as conn:
            for g in groups:
                for table in sorted(p.old.groups[g].tables):
                    info = table_info(conn, table)
                    infos[(cluster, table)] = info
                    if info is None:
                        out.missing.append(f"{cluster}/{table}")
                        continue
                    if info.est_rows <= 0:
                        out.unanalyzed.append(f"{cluster}/{table}")
                    rows = table_rows(conn, info)
                    out.total_rows += rows
                    out.total_bytes += info.est_bytes
                    for move in p.moves:
                        if move.source == cluster and move.group == g:
                            n = move_rows(conn, p, move, info)
                            out.moves.append(MoveEstimate(move, table, n, row_bytes(info, n) if info.est_rows > 0
                                                          else 0, p.predicate_sql(move, table).as_string(conn)))
    return out
