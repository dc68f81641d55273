"""What a captured schema change asks of a destination, and in which phase (reshard/ddl/changes.py)."""

from reshard.cdc_applier.apply import TableWriter
from reshard.cdc_applier.decode import ChangeEvent
from reshard.ddl.changes import Op, Phase, ops, tolerance, widening

T = "public.accounts"


def col(num, name, type_="integer", notnull=False, default=None):
    return {"num": num, "name": name, "type": type_, "notnull": notnull, "default": default, "generated": "",
            "identity": ""}


def shape(*cols, indexes=(), constraints=()):
    return {"table": T, "columns": list(cols), "indexes": list(indexes), "constraints": list(constraints)}


BASE = shape(col(1, "id", "bigint", True), col(2, "owner", "text"), col(3, "balance", "numeric(12,2)"))
KEYS = {"id"}


def one(before, after):
    found = ops(T, before, after, KEYS)
    assert len(found) == 1, found
    return found[0]


def test_additive_changes_are_early_and_spelled_for_a_destination():
    o = one(BASE, shape(*BASE["columns"], col(4, "note", "text", True, "'n/a'::text")))
    assert (o.kind, o.phase) == ("add_column", Phase.EARLY)
    assert o.statement == "ALTER TABLE \"public\".\"accounts\" ADD COLUMN IF NOT EXISTS \"note\" text " \
                          "DEFAULT 'n/a'::text NOT NULL"
    o = one(BASE, shape(*BASE["columns"], indexes=[{"name": "acc_owner", "unique": False,
                                                    "def": "CREATE INDEX acc_owner ON public.accounts USING btree (owner)"}]))
    assert (o.kind, o.phase, o.concurrent) == ("create_index", Phase.EARLY, True)
    assert o.statement == "CREATE INDEX CONCURRENTLY IF NOT EXISTS acc_owner ON public.accounts USING btree (owner)"
    o = one(BASE, shape(BASE["columns"][0], BASE["columns"][1], col(3, "balance", "numeric(14,2)")))
    assert (o.kind, o.phase) == ("alter_type", Phase.EARLY)


def test_destructive_changes_wait_at_the_barrier():
    o = one(BASE, shape(*BASE["columns"][:2]))
    assert (o.kind, o.phase, o.name) == ("drop_column", Phase.BARRIER, "balance")
    o = one(BASE, shape(BASE["columns"][0], col(2, "holder", "text"), BASE["columns"][2]))
    assert (o.kind, o.phase, o.name, o.new_name) == ("rename_column", Phase.BARRIER, "owner", "holder")
    o = one(BASE, shape(BASE["columns"][0], BASE["columns"][1], col(3, "balance", "numeric(10,2)")))
    assert (o.kind, o.phase) == ("alter_type", Phase.BARRIER)
    o = one(BASE, shape(*BASE["columns"], constraints=[{"name": "pos", "type": "c", "def": "CHECK ((balance >= 0))"}]))
    assert (o.kind, o.phase) == ("add_check", Phase.BARRIER)
    assert o.statement.endswith("ADD CONSTRAINT \"pos\" CHECK ((balance >= 0)) NOT VALID")


def test_dropping_a_not_null_column_lets_rows_without_it_in_first():
    before = shape(*BASE["columns"], col(4, "must", "text", True))
    found = ops(T, before, BASE, KEYS)
    assert [(o.kind, o.phase) for o in found] == [("drop_not_null", Phase.EARLY), ("drop_column", Phase.BARRIER)]


def test_what_reshard_will_not_place_is_unsupported_with_the_reason():
    cases = [
        (shape(col(1, "key", "bigint", True), *BASE["columns"][1:]), "key column id"),
        (None, "dropped"),
        ({**BASE, "table": "public.other"}, "renamed"),
        (shape(*BASE["columns"], constraints=[{"name": "u", "type": "u", "def": "UNIQUE (owner)"}]), "only CHECK"),
        (shape(*BASE["columns"], col(4, "must", "text", True)), "NOT NULL without a default"),
    ]
    for after, why in cases:
        o = one(BASE, after)
        assert o.phase == Phase.UNSUPPORTED and why in o.what, (o, why)


def test_ops_know_when_a_destination_has_them_already():
    add = one(BASE, shape(*BASE["columns"], col(4, "note", "text")))
    assert not add.done(BASE) and add.done(shape(*BASE["columns"], col(9, "note", "text")))
    rename = one(BASE, shape(BASE["columns"][0], col(2, "holder", "text"), BASE["columns"][2]))
    assert not rename.done(BASE)
    assert rename.done(shape(BASE["columns"][0], col(5, "holder", "text"), BASE["columns"][2]))
    assert Op.from_dict(rename.to_dict()) == rename


def test_widening_knows_which_type_changes_keep_every_value():
    assert widening("integer", "bigint") and widening("character varying(10)", "character varying(20)")
    assert widening("character varying(10)", "text") and widening("numeric(10,2)", "numeric(12,2)")
    assert not widening("bigint", "integer") and not widening("numeric(10,2)", "numeric(10,3)")
    assert not widening("text", "integer") and not widening("integer[]", "bigint")


def test_rows_of_either_shape_fit_while_a_rename_and_a_drop_are_under_way():
    rename = one(BASE, shape(BASE["columns"][0], col(2, "holder", "text"), BASE["columns"][2]))
    drop = one(BASE, shape(*BASE["columns"][:2]))
    renames, dropped = tolerance([rename, drop])
    assert renames[T] == {"owner": "holder", "holder": "owner"} and dropped[T] == {"balance"}
    w = TableWriter.__new__(TableWriter)  # only the fitting logic: no session
    w.colset, w.renames, w.dropped, w._fits = frozenset({"id", "owner"}), renames[T], frozenset(dropped[T]), {}
    ev = ChangeEvent(T, "u", {"id": 1}, {"id": 1, "holder": "ann", "balance": 5}, frozenset(), 10,
                     ("id", "holder", "balance"))
    fitted = w.fit(ev)
    assert fitted.row == {"id": 1, "owner": "ann"} and fitted.columns == ("id", "owner")
    same = ChangeEvent(T, "u", {"id": 1}, {"id": 1, "owner": "x"}, frozenset(), 11, ("id", "owner"))
    assert w.fit(same) is same
