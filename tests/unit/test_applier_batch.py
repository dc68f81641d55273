"""The applier's batching on plain records: each change goes to the cluster that must apply
it, in order; echoes, keys that do not move, tombstones and undecodable records are counted
or set aside; offsets are the next ones to commit; a TRUNCATE pauses."""

import json
from dataclasses import dataclass

import pytest

from reshard.cdc_applier.batch import prepare
from reshard.cdc_applier.route import Router
from reshard.errors import MigrationPaused
from reshard.kafka.streams import Direction, forward, reverse
from reshard.maps.planner import plan
from reshard.maps.shardmap import parse_map

TABLE = "public.accounts"


def hmap(clusters):
    return parse_map({"groups": {"g": {"key": "bigint", "tables": {"accounts": "id"},
                                       "hash": {"buckets": 4096, "clusters": clusters}}}})


PLAN = plan(hmap({"s1": "0-4095"}), hmap({"t1": "0-2047", "t2": "2048-4095"}))
FWD, REV = forward("m", "s1"), reverse("m", "t1", 1)
ROUTER = Router(PLAN, [FWD, REV])


@dataclass
class Rec:
    topic_: str
    offset_: int
    value_: bytes | None
    partition_: int = 0
    key_: bytes | None = b"{}"

    def error(self):
        return None

    def topic(self):
        return self.topic_

    def partition(self):
        return self.partition_

    def offset(self):
        return self.offset_

    def key(self):
        return self.key_

    def value(self):
        return self.value_


def rec(topic: str, offset: int, op: str, key: int, origin: str | None = None, ts_ms: int = 1) -> Rec:
    return Rec(topic, offset, change(op, key, origin, ts_ms), key_=json.dumps({"id": key}).encode())


def change(op: str, key: int, origin: str | None = None, ts_ms: int = 1) -> bytes:
    fields = [{"type": "int64", "optional": False, "field": "id"}, {"type": "string", "optional": True, "field": "v"}]
    row = {"id": key, "v": f"v{key}"}
    payload = {"before": row if op == "d" else None, "after": None if op == "d" else row, "op": op,
               "source": {"schema": "public", "table": "accounts", "lsn": 100 + key, "origin": origin, "ts_ms": ts_ms}}
    schema = {"type": "struct", "fields": [{"type": "struct", "fields": fields, "optional": True, "field": "before"},
                                          {"type": "struct", "fields": fields, "optional": True, "field": "after"},
                                          {"type": "struct", "fields": [], "field": "source"},
                                          {"type": "string", "field": "op"}]}
    return json.dumps({"schema": schema, "payload": payload}).encode()


def key_owned_by(cluster: str, start: int = 1) -> int:
    return next(k for k in range(start, 10_000) if PLAN.new.owner(TABLE, [k]) == cluster)


def test_forward_changes_go_to_their_new_owner_in_order_and_offsets_advance():
    k1, k2 = key_owned_by("t1"), key_owned_by("t2")
    topic = FWD.topic(TABLE)
    recs = [rec(topic, 10, "c", k1), rec(topic, 11, "u", k2, ts_ms=7), rec(topic, 12, "d", k1),
            Rec(topic, 13, None)]  # a tombstone: no change
    b = prepare(recs, ROUTER, None)
    assert [(r.offset, r.event.op) for r in b.per_dest[("t1", Direction.FORWARD)]] == [(10, "c"), (12, "d")]
    assert [r.offset for r in b.per_dest[("t2", Direction.FORWARD)]] == [11]
    assert b.offsets == {(topic, 0): 14} and b.records == 4 and b.reverse == 0
    assert b.read == {"fwd:s1": 4} and b.newest_ms == {"fwd:s1": 7}


def test_reverse_changes_go_back_and_echoes_of_the_forward_applier_are_skipped():
    k1 = key_owned_by("t1")
    topic = REV.topic(TABLE)
    echo = FWD.writer_origin + "_3"  # the forward applier wrote it on t1: it must not travel back
    b = prepare([rec(topic, 0, "u", k1), rec(topic, 1, "u", k1, origin=echo)], ROUTER, None)
    assert [r.offset for r in b.per_dest[("s1", Direction.REVERSE)]] == [0]
    assert b.echoes == 1 and b.reverse == 2


def test_what_cannot_be_applied_is_set_aside_not_lost():
    topic = FWD.topic(TABLE)
    b = prepare([Rec(topic, 0, b"not json"), rec("some.other.topic", 5, "c", 1)], ROUTER, None)
    assert [r.offset() for r, _why in b.dead] == [0, 5]
    assert b.dead[1][1] == "record from topic some.other.topic, which is not one of this migration's"
    assert b.per_dest == {} and b.offsets == {(topic, 0): 1, ("some.other.topic", 0): 6}


def test_a_truncate_pauses_the_migration():
    topic = FWD.topic(TABLE)
    payload = {"schema": {}, "payload": {"op": "t", "source": {"schema": "public", "table": "accounts", "lsn": 9}}}
    with pytest.raises(MigrationPaused, match="TRUNCATE of public.accounts on s1"):
        prepare([Rec(topic, 0, json.dumps(payload).encode())], ROUTER, None)
