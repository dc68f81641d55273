"""Reconciliation checks the user defines: named SQL aggregates per table (for a ledger,
``sum(amount)`` and ``count(*)`` per currency) that must agree between the rows a move
carries on its source and the same rows on its target.

They run inside the cutover's write pause, after the drain and before routing flips: the
sources are fenced and every change before the fence is applied, so both sides are at
the same consistent point and nothing can change them. The queries share the pause's
budget (a statement timeout of what is left of it): a check that cannot finish in time
backs the cutover out like any other overrun, and a disagreement backs it out with its
own exit code (13), routing unchanged. Compared per move, so any aggregate works
(``avg``, ``max``, ``string_agg(... ORDER BY ...)``), not only additive ones; values are
compared as PostgreSQL prints them, so use exact types (numeric, bigint), not float.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import psycopg
import yaml
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.store import ControlStore
from reshard.errors import ConfigError, ReshardError
from reshard.maps.planner import Plan
from reshard.maps.shardmap import table_ident
from reshard.validation import describe_errors

MAX_REPORTED = 10  # differing groups reported per check and move

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$")]


class Rule(BaseModel):
    """One named check: aggregates over a moving table, optionally per group."""
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Identifier = Field(description="names the check in reports and events")
    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$",
                       description="schema-qualified moving table, e.g. public.ledger")
    aggregates: list[str] = Field(min_length=1, description="SQL aggregate expressions, e.g. sum(amount), count(*)")
    group_by: list[Identifier] = Field(default_factory=list, description="columns to compare per group, e.g. currency")


class RulesFile(BaseModel):
    """The --reconcile file."""
    model_config = ConfigDict(extra="forbid", strict=True, title="reshard reconciliation checks")
    checks: list[Rule] = Field(min_length=1)


class ReconciliationFailed(ReshardError):
    """The sources' moving rows and the targets disagree on a user's check."""

    def __init__(self, results: list[CheckResult]):
        self.results = results
        bad = [r for r in results if not r.ok]
        super().__init__("reconciliation failed: " + "; ".join(
            f"{r.check} on {r.table} ({r.move}): {len(r.differences)} group(s) differ, first "
            f"{r.differences[0]}" for r in bad))


@dataclass
class CheckResult:
    check: str
    move: str
    table: str
    source: str
    target: str
    ok: bool
    groups: int  # groups compared
    ms: float
    differences: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_rules(path: str | Path) -> list[dict[str, Any]]:
    """The checks of a --reconcile file, validated (exit 3 naming the file and path)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        f = RulesFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, str(path), RulesFile)) from None
    names = [r.name for r in f.checks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: checks: duplicate name(s) {', '.join(dup)}")
    return [r.model_dump() for r in f.checks]


def _query(rule: Rule, predicate: sql.Composable) -> sql.Composed:
    groups = [sql.Identifier(c) for c in rule.group_by]
    # the aggregates are the user's SQL, as a report query would be: run with reshard's role,
    # read-only (the caller's transaction is READ ONLY), under a statement timeout
    aggs = [sql.SQL("({})::text").format(sql.SQL(a)) for a in rule.aggregates]
    query = sql.SQL("SELECT {cols} FROM {table} t WHERE {pred}").format(
        cols=sql.SQL(", ").join([sql.SQL("({})::text").format(g) for g in groups] + aggs),
        table=table_ident(rule.table), pred=predicate)
    if groups:
        query += sql.SQL(" GROUP BY {}").format(sql.SQL(", ").join(groups))
    return query


def validate(conn: psycopg.Connection[Any], rules: list[dict[str, Any]], cluster: str) -> None:
    """Each check compiles against a source (the table, columns and SQL exist): run it on
    no rows, so a typo is found at start, not inside the write pause."""
    for r in rules:
        rule = Rule.model_validate(r)
        try:
            with conn.transaction():
                conn.execute(_query(rule, sql.SQL("false")))
        except psycopg.Error as exc:
            raise ConfigError(f"reconciliation check {rule.name} does not run on {cluster}: "
                              f"{str(exc).strip().splitlines()[0]}") from None


def adopt(config: Config, store: ControlStore, migration: str, path: str | Path, keep: bool = True
          ) -> list[dict[str, Any]]:
    """Load a --reconcile file, check every rule compiles on every cluster of the migration,
    and (``keep``) store the rules with the migration, for its later waves and its rollback."""
    rules = load_rules(path)
    p = store.plan_of(store.migration(migration))
    tables = set(p.tables())
    strangers = sorted({r["table"] for r in rules} - tables)
    if strangers:
        raise ConfigError(f"{path}: {', '.join(strangers)} not moved by migration {migration} "
                          f"(it moves {', '.join(sorted(tables))})")
    for cluster in sorted({*p.sources(), *p.targets()}):
        with connect(config.cluster(cluster).dsn, f"cluster {cluster}", autocommit=True) as conn:
            validate(conn, rules, cluster)
    if keep:
        store.update_settings(migration, reconcile=rules)
    return rules


def reconcile(plan: Plan, rules: list[dict[str, Any]], conn_of: Callable[[str], psycopg.Connection[Any]],
              deadline: float) -> list[CheckResult]:
    """Run every check for every move of ``plan`` whose group holds its table, source
    against target with the move's predicate; the statements stop at ``deadline``
    (time.monotonic), raising psycopg's QueryCanceled."""
    out = []
    for r in rules:
        rule = Rule.model_validate(r)
        for move in plan.moves:
            if rule.table not in plan.new.groups[move.group].tables:
                continue
            started = time.monotonic()
            query = _query(rule, plan.predicate_sql(move, rule.table, alias="t"))
            sides = []
            for cluster in (move.source, move.target):
                left_ms = int((deadline - time.monotonic()) * 1000)
                conn = conn_of(cluster)
                with conn.transaction():
                    conn.execute("SET TRANSACTION READ ONLY")
                    conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(max(1, left_ms))))
                    rows = conn.execute(query).fetchall()
                width = len(rule.group_by)
                sides.append({tuple(row[:width]): tuple(row[width:]) for row in rows})
            src, tgt = sides
            differences = []
            for key in sorted(set(src) | set(tgt), key=repr):
                if src.get(key) != tgt.get(key):
                    differences.append({"group": dict(zip(rule.group_by, key)),
                                        "source": dict(zip(rule.aggregates, src[key])) if key in src else None,
                                        "target": dict(zip(rule.aggregates, tgt[key])) if key in tgt else None})
            out.append(CheckResult(rule.name, move.id, rule.table, move.source, move.target, not differences,
                                   len(set(src) | set(tgt)), round((time.monotonic() - started) * 1000, 1),
                                   differences[:MAX_REPORTED]))
    return out
