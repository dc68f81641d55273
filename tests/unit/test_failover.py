"""What a failover did to a stream's slot (reshard/cluster/failover.py), on plain data, and
how a cluster that lists its standbys is configured."""

import pytest

from reshard.cluster.failover import Lineage, Origin, Primary, SlotRow, connect_address, judge
from reshard.config import ClusterConfig, parse_config
from reshard.errors import ConfigError

MADE_ON = Origin("7400000000000000001", 1)


def primary(major: int, timeline: int = 1, system: str = MADE_ON.system_id, index: int = 0) -> Primary:
    return Primary("127.0.0.1", str(5432 + index), index, Origin(system, timeline), major)


@pytest.mark.parametrize("major", [15, 16, 17, 18])
def test_a_slot_on_the_primary_it_was_made_on_is_the_same(major):
    assert judge(MADE_ON, primary(major), SlotRow(major >= 17, False))[0] == Lineage.SAME


@pytest.mark.parametrize("major", [15, 16, 17, 18])
def test_a_missing_slot_is_lost_whatever_the_timeline(major):
    lineage, why = judge(MADE_ON, primary(major), None)
    assert lineage == Lineage.LOST and "not on the primary 127.0.0.1:5432: it was dropped" in why
    lineage, why = judge(MADE_ON, primary(major, 2), None)
    assert lineage == Lineage.LOST and "moved from timeline 1 to 2" in why
    assert ("had not synchronized it" if major >= 17 else f"PostgreSQL {major} keeps") in why


@pytest.mark.parametrize("major", [15, 16])
def test_before_17_a_slot_on_a_new_timeline_was_made_anew(major):
    # a consumer (Debezium, pointed at a name that follows the primary) found none and made one
    lineage, why = judge(MADE_ON, primary(major, 2), SlotRow(False, False))
    assert lineage == Lineage.LOST and f"PostgreSQL {major} keeps a logical slot on its primary only" in why


@pytest.mark.parametrize("major", [17, 18])
def test_from_17_a_synchronized_failover_slot_is_carried(major):
    lineage, why = judge(MADE_ON, primary(major, 3, index=1), SlotRow(True, True))
    assert lineage == Lineage.CARRIED and "from timeline 1 to 3 (127.0.0.1:5433)" in why


@pytest.mark.parametrize("slot", [SlotRow(True, False), SlotRow(False, False), SlotRow(False, True)])
def test_from_17_a_slot_not_synchronized_from_the_old_primary_is_lost(slot):
    lineage, why = judge(MADE_ON, primary(17, 2), slot)
    assert lineage == Lineage.LOST and "not synchronized from the old primary" in why


def test_another_cluster_behind_the_same_name_is_lost():
    lineage, why = judge(MADE_ON, primary(17, 1, system="7400000000000000002"), SlotRow(True, True))
    assert lineage == Lineage.LOST and "another cluster" in why


def test_a_slot_without_a_recorded_origin_is_taken_as_it_is():
    assert judge(None, primary(16, 5), SlotRow(False, False))[0] == Lineage.SAME


MULTI = "host=10.0.0.1,10.0.0.2 port=5432,5433 dbname=app user=u target_session_attrs=read-write"


def test_debezium_captures_from_the_primary_at_the_same_place_in_connect_dsn():
    c = ClusterConfig("source1", MULTI, "host=pg-a,pg-b port=5432,5433 dbname=app user=u target_session_attrs=read-write")
    assert connect_address(c, primary(17, 2, index=1)) == ("pg-b", "5433")
    follows = ClusterConfig("source1", MULTI, "host=pg-primary.internal port=5432 dbname=app")
    assert connect_address(follows, primary(17, 2, index=1)) == ("pg-primary.internal", "5432")
    same = ClusterConfig("source1", MULTI, MULTI)
    assert connect_address(same, primary(17, 2, index=1)) == ("10.0.0.2", "5433")


def _config(dsn: str, connect_dsn: str | None = None) -> dict:
    cluster = {"dsn": dsn, **({"connect_dsn": connect_dsn} if connect_dsn else {})}
    return {"control": {"dsn": "host=127.0.0.1 dbname=c"}, "clusters": {"source1": cluster},
            "kafka": {"bootstrap_servers": "127.0.0.1:9092", "format": "json"}, "connect": {"url": "http://127.0.0.1:8083"}}


def test_a_dsn_listing_standbys_must_ask_for_the_primary():
    with pytest.raises(ConfigError, match="add target_session_attrs=read-write"):
        parse_config(_config("host=a,b port=5432 dbname=app"))
    assert parse_config(_config(MULTI)).cluster("source1").hosts() == [("10.0.0.1", "5432"), ("10.0.0.2", "5433")]
    assert parse_config(_config("host=a,b port=5432 dbname=app target_session_attrs=primary")).cluster(
        "source1").hosts() == [("a", "5432"), ("b", "5432")]


def test_connect_dsn_lists_one_host_or_as_many_as_the_dsn():
    with pytest.raises(ConfigError, match="connect_dsn lists 3 hosts: list one"):
        parse_config(_config(MULTI, "host=x,y,z port=1 dbname=app"))
    with pytest.raises(ConfigError, match="lists 2 host"):
        parse_config(_config("host=a,b port=1,2,3 dbname=app target_session_attrs=read-write"))
