"""The applier under attack: SIGKILL mid-stream, full replays, out-of-order events."""

import os
import random
import signal
import time

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from reshard.cdc_applier.apply import Routed, TargetWriter
from reshard.cdc_applier.decode import ChangeEvent
from reshard.cluster import shard_schema
from reshard.cluster.catalog import require_table
from reshard.config import KafkaConfig
from reshard.kafka.admin import KafkaAdmin, client_conf
from reshard.proof.catchup import applier_group
from reshard.stack.workload import Workload, create_table
from tests.e2e.helpers import (
    ApplierThread,
    all_rows,
    assert_targets_equal_source,
    at_failpoint,
    prepare,
    spawn,
    wait_for,
    write_config_file,
)


def test_sigkill_applier_mid_stream_then_restart_loses_nothing(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=10_000, migration=name)
    cfg = write_config_file(env, tmp_path)
    load = Workload(env.dsn("source1"), rate=400, max_seconds=180, seed=2)
    load.start()
    try:
        co.start(name, batch_rows=5000)
        # killed twice, at different depths of the stream, each time with a batch committed on the
        # targets and its Kafka offsets not: the next applier gets it again
        for round_, point in enumerate(("apply_batch:committed#3", "apply_batch:committed#8")):
            log = tmp_path / f"apply{round_}.log"
            proc = spawn(cfg, log, "apply", name, "--batch-rows", "200", failpoint=point)
            at_failpoint(proc, log, point, timeout=90)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.returncode == -signal.SIGKILL
            time.sleep(1.0)  # the load keeps writing while no applier runs
        final = spawn(cfg, tmp_path / "apply-final.log", "--progress", "off", "apply", name)
        time.sleep(3.0)
        stats = load.stop()
        co.wait(name, timeout=120)
        final.send_signal(signal.SIGTERM)
        assert final.wait(timeout=60) == 0, (tmp_path / "apply-final.log").read_text()
    finally:
        load.stop()
    assert stats.errors == 0 and stats.operations > 1000
    assert_targets_equal_source(env)
    assert co.verify(name).equal


def _rewind(kafka: KafkaConfig, group: str, topics: list[str]) -> None:
    admin = AdminClient(client_conf(kafka))
    parts = KafkaAdmin(kafka).topics()
    tps = [TopicPartition(t, p, 0) for t in topics for p in range(parts[t])]

    def attempt():
        try:
            admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group].result()
            return True
        except Exception:  # the group still has a (dead) member until its session times out
            return False

    wait_for(attempt, 30, "the consumer group to accept a rewind", interval=1.0)


def test_replaying_the_whole_stream_has_no_effect(env):
    name = env.migration()
    co = prepare(env, rows=3_000, migration=name)
    load = Workload(env.dsn("source1"), rate=300, max_seconds=60, seed=3)
    load.start()
    co.start(name)
    with ApplierThread(co, name) as first:
        time.sleep(4.0)
        load.stop()
        co.wait(name, timeout=90)
    before = {t: all_rows(env.dsn(t)) for t in ("target1", "target2")}
    applied_first = first.result["stats"].applied
    assert applied_first > 500
    # Kafka delivers at least once: deliver everything again, from offset 0
    _rewind(env.config.kafka, applier_group(name), co.topics(name))
    with ApplierThread(co, name) as second:
        co.wait(name, timeout=90)
    s = second.result["stats"]
    assert s.records >= applied_first
    assert s.applied == 0, "a replayed event changed a row"
    assert s.skipped_stale == s.records - s.not_moving
    assert {t: all_rows(env.dsn(t)) for t in ("target1", "target2")} == before
    assert_targets_equal_source(env)


def _event(op, key, lsn, row=None, unavailable=()):
    cols = ("id", "owner", "balance", "opened_at", "attrs", "note")
    return ChangeEvent("public.accounts", op, {"id": key}, row, frozenset(unavailable), lsn, cols)


def test_events_applied_in_any_order_and_any_number_of_times_converge(env):
    """Per key, the newest change wins whatever order and multiplicity events arrive in."""
    with env.conn("target1") as conn:
        create_table(conn)
        shard_schema.install(conn)
        shard_schema.writer_session(conn)
        info = require_table(conn, "public.accounts", "target1")
        writer = TargetWriter(conn, "target1", "m", {"public.accounts": info}, {})

        def row(owner, bal, note="n"):
            return {"id": None, "owner": owner, "balance": bal, "opened_at": "2026-01-01T00:00:00Z",
                    "attrs": "{}", "note": note}

        histories = {
            1: [_event("c", 1, 10, dict(row("a", "1.00"), id=1)), _event("u", 1, 20, dict(row("b", "2.00"), id=1)),
                _event("d", 1, 30)],
            2: [_event("c", 2, 11, dict(row("a", "1.00"), id=2)), _event("u", 2, 21, dict(row("b", "2.00"), id=2)),
                _event("u", 2, 31, {"id": 2, "owner": "c", "balance": "3.00", "opened_at": "2026-01-01T00:00:00Z",
                                    "attrs": "{}"}, unavailable=("note",))],
            3: [_event("d", 3, 12), _event("c", 3, 22, dict(row("z", "9.00", note="keep"), id=3))],
        }
        def reset():
            conn.execute("TRUNCATE public.accounts")
            conn.execute("DELETE FROM reshard.applied_rows WHERE migration = 'm'")

        def apply_in_batches(events, rng):
            i = 0
            while i < len(events):
                n = rng.randint(1, 4)
                writer.apply([Routed(e, "t", 0, j, "source1") for j, e in enumerate(events[i:i + n])], {})
                i += n

        in_order = [e for evs in histories.values() for e in evs]
        reset()
        writer.apply([Routed(e, "t", 0, i, "source1") for i, e in enumerate(in_order)], {})
        expected = conn.execute("SELECT * FROM public.accounts ORDER BY id").fetchall()
        assert [r[0] for r in expected] == [2, 3] and expected[0][1] == "c" and expected[0][5] == "n"
        rng = random.Random(7)
        for trial in range(30):
            reset()
            # keys live on different partitions: any interleaving across keys, each key in order
            queues = {k: list(evs) for k, evs in histories.items()}
            seq = []
            while any(queues.values()):
                k = rng.choice([k for k, q in queues.items() if q])
                seq.append(queues[k].pop(0))
                if not queues[k] and rng.random() < 0.7:
                    # a replay after a restart: the key's whole history again, later on
                    pos = rng.randint(len(seq), len(seq) + 3)
                    seq[pos:pos] = histories[k]
            apply_in_batches(seq, rng)
            assert conn.execute("SELECT * FROM public.accounts ORDER BY id").fetchall() == expected, (trial, seq)
