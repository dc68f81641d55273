"""The applier's offset commits on a real broker (cdc_applier/commits.py): offsets Kafka
refused are committed later by the member still holding their partition, dropped otherwise."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer

from reshard.cdc_applier.commits import OffsetCommits
from reshard.kafka.admin import KafkaAdmin, client_conf
from tests.e2e.helpers import wait_for


def _consumer(env, group: str) -> Consumer:
    return Consumer(client_conf(env.config.kafka, **{
        "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 10000}))


def test_offsets_kept_from_a_refused_commit_are_committed_by_the_member_holding_their_partition(env):
    """A refusal cannot be brought about at will on a live broker (the client rejoins on its
    own; tests/unit/test_offset_commits.py refuses with Kafka's own errors); what was kept is
    committed here, on the broker, once the member holds the partition, and the next batch's
    offset supersedes it."""
    topic, group = f"{env.name}.commits", f"{env.name}-commits"
    admin = KafkaAdmin(env.config.kafka)
    admin.ensure_topics([topic], 1, env.config.kafka.replication_factor)
    producer = Producer(client_conf(env.config.kafka))
    for i in range(10):
        producer.produce(topic, value=str(i).encode())
    producer.flush(10)
    member = _consumer(env, group)
    member.subscribe([topic])
    got: list = []
    wait_for(lambda: got.extend(m for m in member.consume(10, 0.5) if not m.error()) or len(got) == 10, 60,
             "the ten records")
    commits = OffsetCommits(attempts=2, delay_s=0.1)
    commits.kept = {(topic, 0): 5}  # as a commit refused during a rebalance leaves it
    commits.retry(member)
    assert commits.kept == {} and admin.committed(group, [topic])[(topic, 0)] == 5
    commits.commit(member, {(topic, 0): 10})
    assert admin.committed(group, [topic])[(topic, 0)] == 10
    member.close()


def test_kept_offsets_of_a_partition_this_member_lost_are_dropped(env):
    topic, group = f"{env.name}.lost", f"{env.name}-lost"
    KafkaAdmin(env.config.kafka).ensure_topics([topic], 1, env.config.kafka.replication_factor)
    member = _consumer(env, group)
    member.subscribe([topic])
    commits = OffsetCommits()
    commits.kept = {(topic, 0): 3, ("gone", 1): 7}  # refused earlier; this member holds neither now
    commits.retry(member)
    assert commits.kept == {}
    member.close()
