"""What a captured schema change asks of a destination, and when it is safe to do it.

A source's event trigger records a watched table's shape before and after each DDL
command (reshard/cluster/shard_sql/0004_ddl_capture.sql). ``ops`` turns the difference
into statements for a destination, each with a phase:

- EARLY (additive, relaxing): rows of the old shape still fit after it, so it is applied
  as soon as the first source stream brings it: a new nullable or defaulted column, a
  new default, a dropped NOT NULL or CHECK, a widened type, a new (non-unique) index.
- BARRIER (destructive, narrowing, or able to reject a row): rows of the old shape from
  a source that has not passed it yet might not fit, so it waits until every source
  stream feeding the destination has passed it: DROP COLUMN, RENAME, a narrowed or
  changed type, SET NOT NULL, DROP INDEX, a new UNIQUE index or CHECK constraint (NOT
  VALID: it skips existing rows but checks every row written after it).
- UNSUPPORTED: what reshard will not place (a key column changed, a primary key, unique,
  foreign-key or exclusion constraint, generated or identity columns, the table renamed
  or dropped). The migration's policy pauses on these.

Diffing shapes rather than parsing statements is what makes this exact: the catalogs say
what a statement did, however it was spelled, and columns are matched by attnum, so a
rename is told from a drop plus an add. Every op knows from a destination's shape whether
it is already in effect there, which makes applying it idempotent (a rerun after a crash
between two destinations does nothing twice).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from psycopg import sql


class Phase(StrEnum):
    EARLY = "early"
    BARRIER = "barrier"
    UNSUPPORTED = "unsupported"


# type changes that keep every value and its text form: applied early
_WIDER = {
    ("smallint", "integer"), ("smallint", "bigint"), ("integer", "bigint"),
    ("smallint", "numeric"), ("integer", "numeric"), ("bigint", "numeric"),
    ("real", "double precision"),
    ("character varying", "text"), ("character", "text"),
}
_TYPMOD = re.compile(r"^(?P<base>[a-z ]+?)(?:\((?P<args>[0-9, ]+)\))?(?P<array>(\[\])*)$")


def widening(old: str, new: str) -> bool:
    """True when every value of type ``old`` is a value of ``new`` unchanged."""
    mo, mn = _TYPMOD.match(old), _TYPMOD.match(new)
    if not mo or not mn or mo["array"] != mn["array"]:
        return False
    bo, bn = mo["base"].strip(), mn["base"].strip()
    if (bo, bn) in _WIDER and mn["args"] is None:
        return True
    if bo != bn:
        return False
    if mn["args"] is None:
        return mo["args"] is not None  # varchar(10) -> varchar, numeric(10,2) -> numeric
    if mo["args"] is None:
        return False
    ao = [int(x) for x in mo["args"].split(",")]
    an = [int(x) for x in mn["args"].split(",")]
    if bo in ("character varying", "bit varying"):
        return an[0] >= ao[0]
    if bo == "numeric" and len(ao) == len(an):
        # more digits on both sides of the point
        so, sn = (ao[1] if len(ao) > 1 else 0), (an[1] if len(an) > 1 else 0)
        return sn >= so and an[0] - sn >= ao[0] - so
    return False


@dataclass(frozen=True)
class Op:
    """One statement for a destination table."""

    table: str
    kind: str
    phase: Phase
    what: str  # for people: "add column note text"
    statement: str  # the SQL (empty for UNSUPPORTED)
    name: str = ""  # the column, index or constraint it is about
    new_name: str = ""  # renames: the new column name
    type: str = ""  # add/alter: the column's type
    notnull: bool = False
    default: str | None = None
    concurrent: bool = False  # runs outside a transaction (CREATE/DROP INDEX CONCURRENTLY)

    @property
    def changes_columns(self) -> bool:
        """Whether rows are written differently after it (the applier's writers must reload)."""
        return self.kind in ("add_column", "drop_column", "rename_column", "alter_type", "set_not_null",
                             "drop_not_null", "set_default", "drop_default")

    def done(self, shape: dict | None) -> bool:
        """Whether a destination whose table has ``shape`` already has this change."""
        if shape is None:
            return False
        cols = {c["name"]: c for c in shape.get("columns", [])}
        indexes = {i["name"] for i in shape.get("indexes", [])}
        constraints = {k["name"] for k in shape.get("constraints", [])}
        col = cols.get(self.name)
        match self.kind:
            case "add_column":
                return col is not None
            case "drop_column":
                return col is None
            case "rename_column":
                return col is None and self.new_name in cols
            case "alter_type":
                return col is not None and col["type"] == self.type
            case "set_not_null":
                return col is not None and col["notnull"]
            case "drop_not_null":
                return col is not None and not col["notnull"]
            case "set_default":
                return col is not None and col["default"] == self.default
            case "drop_default":
                return col is not None and col["default"] is None
            case "create_index":
                return self.name in indexes
            case "drop_index":
                return self.name not in indexes
            case "add_check":
                return self.name in constraints
            case "drop_constraint":
                return self.name not in constraints
        return False

    def to_dict(self) -> dict:
        return {"table": self.table, "kind": self.kind, "phase": str(self.phase), "what": self.what,
                "statement": self.statement, "name": self.name, "new_name": self.new_name, "type": self.type,
                "notnull": self.notnull, "default": self.default, "concurrent": self.concurrent}

    @classmethod
    def from_dict(cls, d: dict) -> Op:
        return cls(**{**d, "phase": Phase(d["phase"])})


def _ident(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def _table(name: str) -> str:
    return sql.Identifier(*name.split(".", 1)).as_string(None)


def _alter(table: str, clause: str) -> str:
    return f"ALTER TABLE {_table(table)} {clause}"


def _index_sql(definition: str) -> str:
    """``pg_get_indexdef``'s statement, built concurrently and only when missing."""
    return re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY IF NOT EXISTS ", definition, count=1)


def _unsupported(table: str, what: str) -> Op:
    return Op(table, "unsupported", Phase.UNSUPPORTED, what, "")


def ops(table: str, before: dict | None, after: dict | None, key_columns: set[str]) -> list[Op]:
    """The ops that bring a destination's ``table`` from ``before`` to ``after``.
    ``key_columns``: the primary key and the shard key, which no change may touch."""
    if before is None:
        return [_unsupported(table, "the table was not watched before this change")]
    if after is None:
        return [_unsupported(table, "the table was dropped")]
    if after["table"] != before["table"]:
        return [_unsupported(table, f"the table was renamed to {after['table']}")]
    out: list[Op] = []
    out += _column_ops(table, before, after, key_columns)
    out += _index_ops(table, before, after)
    out += _constraint_ops(table, before, after)
    return out


def _column_ops(table: str, before: dict, after: dict, key_columns: set[str]) -> list[Op]:
    old = {c["num"]: c for c in before["columns"]}
    new = {c["num"]: c for c in after["columns"]}
    out: list[Op] = []
    for num, c in new.items():
        name = c["name"]
        if num not in old:
            if c["generated"] or c["identity"]:
                out.append(_unsupported(table, f"column {name} was added as a generated or identity column"))
            elif c["notnull"] and c["default"] is None:
                out.append(_unsupported(table, f"column {name} was added NOT NULL without a default"))
            else:
                clause = f"ADD COLUMN IF NOT EXISTS {_ident(name)} {c['type']}"
                if c["default"] is not None:
                    clause += f" DEFAULT {c['default']}"
                if c["notnull"]:
                    clause += " NOT NULL"
                out.append(Op(table, "add_column", Phase.EARLY, f"add column {name} {c['type']}",
                              _alter(table, clause), name, type=c["type"], notnull=c["notnull"], default=c["default"]))
            continue
        o = old[num]
        if o["name"] in key_columns and (o["name"] != name or o["type"] != c["type"]):
            out.append(_unsupported(table, f"key column {o['name']} was renamed or changed type"))
            continue
        if (o["generated"], o["identity"]) != (c["generated"], c["identity"]):
            out.append(_unsupported(table, f"column {name} became or stopped being generated or identity"))
            continue
        if o["name"] != name:
            out.append(Op(table, "rename_column", Phase.BARRIER, f"rename column {o['name']} to {name}",
                          _alter(table, f"RENAME COLUMN {_ident(o['name'])} TO {_ident(name)}"), o["name"], name))
        if o["type"] != c["type"]:
            phase = Phase.EARLY if widening(o["type"], c["type"]) else Phase.BARRIER
            out.append(Op(table, "alter_type", phase, f"change column {name} from {o['type']} to {c['type']}",
                          _alter(table, f"ALTER COLUMN {_ident(name)} TYPE {c['type']} USING {_ident(name)}::{c['type']}"),
                          name, type=c["type"]))
        if o["default"] != c["default"]:
            if c["default"] is None:
                out.append(Op(table, "drop_default", Phase.EARLY, f"drop the default of {name}",
                              _alter(table, f"ALTER COLUMN {_ident(name)} DROP DEFAULT"), name))
            else:
                out.append(Op(table, "set_default", Phase.EARLY, f"set the default of {name} to {c['default']}",
                              _alter(table, f"ALTER COLUMN {_ident(name)} SET DEFAULT {c['default']}"), name,
                              default=c["default"]))
        if o["notnull"] != c["notnull"]:
            if c["notnull"]:
                out.append(Op(table, "set_not_null", Phase.BARRIER, f"set {name} NOT NULL",
                              _alter(table, f"ALTER COLUMN {_ident(name)} SET NOT NULL"), name))
            else:
                out.append(Op(table, "drop_not_null", Phase.EARLY, f"drop NOT NULL of {name}",
                              _alter(table, f"ALTER COLUMN {_ident(name)} DROP NOT NULL"), name))
    for num, o in old.items():
        if num in new:
            continue
        name = o["name"]
        if name in key_columns:
            out.append(_unsupported(table, f"key column {name} was dropped"))
            continue
        if o["notnull"] and o["default"] is None:
            # rows from a source that dropped it no longer carry it: let them in meanwhile
            out.append(Op(table, "drop_not_null", Phase.EARLY, f"drop NOT NULL of {name} (dropped at the source)",
                          _alter(table, f"ALTER COLUMN {_ident(name)} DROP NOT NULL"), name))
        out.append(Op(table, "drop_column", Phase.BARRIER, f"drop column {name}",
                      _alter(table, f"DROP COLUMN IF EXISTS {_ident(name)}"), name))
    return out


def _index_ops(table: str, before: dict, after: dict) -> list[Op]:
    old = {i["name"]: i for i in before["indexes"]}
    new = {i["name"]: i for i in after["indexes"]}
    out: list[Op] = []
    schema = table.split(".", 1)[0]
    for name, i in new.items():
        if name in old and old[name]["def"] == i["def"]:
            continue
        if name in old:
            out.append(_unsupported(table, f"index {name} was redefined"))
            continue
        phase = Phase.BARRIER if i["unique"] else Phase.EARLY  # a unique index can reject a row
        out.append(Op(table, "create_index", phase, f"create {'unique ' if i['unique'] else ''}index {name}",
                      _index_sql(i["def"]), name, concurrent=True))
    for name in old.keys() - new.keys():
        out.append(Op(table, "drop_index", Phase.BARRIER, f"drop index {name}",
                      f"DROP INDEX CONCURRENTLY IF EXISTS {_table(f'{schema}.{name}')}", name, concurrent=True))
    return out


def _constraint_ops(table: str, before: dict, after: dict) -> list[Op]:
    old = {k["name"]: k for k in before["constraints"]}
    new = {k["name"]: k for k in after["constraints"]}
    out: list[Op] = []
    for name, k in new.items():
        if name in old and old[name]["def"] == k["def"]:
            continue
        if k["type"] != "c" or name in old:
            out.append(_unsupported(table, f"constraint {name} ({k['def']}) was added or redefined: only CHECK "
                                           "constraints are placed"))
            continue
        definition = k["def"] if k["def"].endswith("NOT VALID") else f"{k['def']} NOT VALID"
        out.append(Op(table, "add_check", Phase.BARRIER, f"add constraint {name} {k['def']}",
                      _alter(table, f"ADD CONSTRAINT {_ident(name)} {definition}"), name))
    for name in old.keys() - new.keys():
        if old[name]["type"] != "c":
            out.append(_unsupported(table, f"constraint {name} ({old[name]['def']}) was dropped: only CHECK "
                                           "constraints are placed"))
            continue
        out.append(Op(table, "drop_constraint", Phase.EARLY, f"drop constraint {name}",
                      _alter(table, f"DROP CONSTRAINT IF EXISTS {_ident(name)}"), name))
    return out


def tolerance(applied_order: list[Op]) -> tuple[dict[str, dict[str, str]], dict[str, set[str]]]:
    """What a destination's writer forgives in rows while a change is under way, per table:
    column renames both ways (rows of either name reach the one the destination has) and
    columns a recorded change drops (rows of the old shape still carry them; the value goes
    nowhere, as the column is leaving every shard). ``applied_order``: every op recorded for
    the migration's direction, in the order the follower recorded them."""
    renames: dict[str, dict[str, str]] = {}
    dropped: dict[str, set[str]] = {}
    for op in applied_order:
        if op.kind == "rename_column":
            m = renames.setdefault(op.table, {})
            m[op.name], m[op.new_name] = op.new_name, op.name
        elif op.kind == "drop_column":
            dropped.setdefault(op.table, set()).add(op.name)
        elif op.kind == "add_column":
            dropped.get(op.table, set()).discard(op.name)
    return renames, dropped
