"""A source's physical standby (reshard/stack/standby.py) and what a failover does to a
logical slot: on 17+ a failover slot is synchronized to the standby and, after a promotion,
the new primary decodes from exactly where the old one's consumer confirmed; on 16 the slot
stays behind on the old primary (the stream is lost, and reshard must say so)."""

import time

import psycopg
import pytest

from reshard.cluster import failover
from reshard.config import ClusterConfig
from reshard.stack import standby as standbys
from reshard.stack.postgres import PostgresCluster, data_root
from reshard.stack.process import stop
from reshard.stack.stack import free_port
from tests.e2e.helpers import wait_for


@pytest.fixture
def pair(tmp_path, request):
    """A primary of the parametrized major and its standby; both stopped afterwards."""
    major = request.param
    root = data_root(tmp_path)
    primary = PostgresCluster(f"p{major}", root / "p", free_port(), tmp_path / "p.log", major=major)
    replica = PostgresCluster(f"s{major}", root / "s", free_port(), tmp_path / "s.log", major=major)
    recs = []
    try:
        primary.init()
        recs.append(primary.start())
        primary.wait_ready(recs[0])
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        recs.append(standbys.create(primary, replica))
        yield major, primary, replica, recs
    finally:
        for rec in recs:
            stop(rec)


def _changes(conn, slot: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL)", (slot,))
            if r[0].startswith("table public.t: INSERT")]


def _caught_up(primary: PostgresCluster, replica: PostgresCluster) -> bool:
    with psycopg.connect(primary.dsn()) as p, psycopg.connect(replica.dsn()) as s:
        end = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        return s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (end,)).fetchone()[0]


@pytest.mark.parametrize("pair", [17, 18], indirect=True, ids=["pg17", "pg18"])
def test_a_failover_slot_follows_the_promoted_standby_from_its_confirmed_position(pair):
    major, primary, replica, recs = pair
    consumed: list[str] = []
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('s1', 'test_decoding', false, false, true)")
        conn.execute("INSERT INTO t SELECT generate_series(101, 150)")

        def standby_slot() -> tuple | None:
            with psycopg.connect(replica.dsn()) as s:
                return s.execute("SELECT synced FROM pg_replication_slots WHERE slot_name = 's1'").fetchone()

        def synced() -> bool:
            # a new slot is synchronized once its consumer moved it past the standby's horizon: the
            # consumer confirms what it read, and a standby snapshot record lets the slot's xmin move
            conn.execute("SELECT pg_log_standby_snapshot()")
            consumed.extend(_changes(conn, "s1"))
            row = standby_slot()
            return bool(row and row[0])
        wait_for(synced, 90, "the standby to synchronize the failover slot", interval=1.0)
        confirmed = conn.execute("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 's1'"
                                 ).fetchone()[0]

        def reached() -> bool:
            with psycopg.connect(replica.dsn()) as s:
                return bool(s.execute("SELECT bool_or(confirmed_flush_lsn >= %s::pg_lsn) FROM pg_replication_slots "
                                      "WHERE slot_name = 's1'", (confirmed,)).fetchone()[0])
        wait_for(reached, 60, "the standby's copy of the slot to reach the consumer's confirmed position")
        assert len(consumed) == 50  # consumed and confirmed: these must not come again
        conn.execute("INSERT INTO t SELECT generate_series(151, 175)")  # written, not yet consumed
    wait_for(lambda: _caught_up(primary, replica), 60, "the standby to replay everything")
    stop(recs[0])  # the primary goes away
    with psycopg.connect(replica.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_promote(true, 60)").fetchone()[0]
        wait_for(lambda: not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0], 30, "the promotion")
        conn.execute("INSERT INTO t SELECT generate_series(176, 180)")  # the new primary takes writes
        # what tells a carried-over slot from one a consumer made anew on the new primary
        assert conn.execute("SELECT failover, synced FROM pg_replication_slots WHERE slot_name = 's1'").fetchone() \
            == (True, True)
        got = _changes(conn, "s1")
    ids = sorted(int(line.split("id[integer]:")[1].split()[0]) for line in got)
    assert ids == list(range(151, 181)), ids  # nothing lost, nothing confirmed before delivered again


@pytest.mark.parametrize("pair", [16], indirect=True, ids=["pg16"])
def test_on_16_a_logical_slot_stays_behind_on_the_old_primary(pair):
    _major, primary, replica, recs = pair
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')")
        conn.execute("INSERT INTO t VALUES (101)")
    wait_for(lambda: _caught_up(primary, replica), 60, "the standby to replay everything")
    stop(recs[0])
    with psycopg.connect(replica.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_promote(true, 60)").fetchone()[0]
        time.sleep(0.5)
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's1'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 101  # the data came over; the stream did not


@pytest.mark.parametrize("pair", [17], indirect=True, ids=["pg17"])
def test_what_a_standby_lacks_to_carry_failover_slots_is_named(pair):
    _major, primary, replica, _recs = pair
    cluster = ClusterConfig("source1", *[f"host=127.0.0.1,127.0.0.1 port={primary.port},{replica.port} user=postgres "
                                         "dbname=postgres target_session_attrs=read-write"] * 2)

    def missing() -> list[str]:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            (sb,) = failover.standbys(cluster, failover.locate(cluster, conn), conn, [])
            assert (sb.host, sb.port) == ("127.0.0.1", str(replica.port))
            return sb.missing
    assert missing() == []
    with psycopg.connect(replica.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET sync_replication_slots = off")
        conn.execute("ALTER SYSTEM SET hot_standby_feedback = off")
        conn.execute("SELECT pg_reload_conf()")
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM RESET synchronized_standby_slots")
        conn.execute("SELECT pg_reload_conf()")
    wait_for(lambda: len(missing()) == 3, 10, "the settings to apply")
    got = missing()
    assert got[:2] == ["sync_replication_slots = on", "hot_standby_feedback = on"], got
    assert got[2].startswith(f"on the primary: synchronized_standby_slots to include '{standbys.slot_name(replica)}'")
