"""The bookkeeping of refused offset commits (cdc_applier/commits.py), against Kafka's own
error values; the broker's side is tests/e2e/test_offset_commits.py."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from reshard.cdc_applier.commits import OffsetCommits, left_group


class Member:
    """What OffsetCommits asks of a consumer: its assignment, and a commit that answers with
    the next of ``answers`` (an error code, or None for taken)."""

    def __init__(self, held: list[tuple[str, int]], answers: list[int | None]):
        self.held = held
        self.answers = answers
        self.taken: list[dict[tuple[str, int], int]] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.held]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        code = self.answers.pop(0)
        if code is not None:
            raise KafkaException(KafkaError(code))
        self.taken.append({(tp.topic, tp.partition): tp.offset for tp in offsets})


def test_a_refused_commit_is_kept_and_goes_with_the_next_one_superseded_per_partition():
    member = Member([("a", 0), ("a", 1)], [KafkaError.REBALANCE_IN_PROGRESS, None])
    commits = OffsetCommits(attempts=3, delay_s=0)
    with pytest.raises(KafkaException) as refused:
        commits.commit(member, {("a", 0): 5, ("a", 1): 7})
    assert left_group(refused.value) and commits.kept == {("a", 0): 5, ("a", 1): 7}
    commits.commit(member, {("a", 0): 9})  # the next batch touched partition 0 only
    assert member.taken == [{("a", 0): 9, ("a", 1): 7}] and commits.kept == {}


def test_an_idle_member_commits_what_was_kept_and_nothing_when_nothing_was():
    member = Member([("a", 0)], [KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, None])
    commits = OffsetCommits(attempts=3, delay_s=0)
    commits.retry(member)  # nothing kept: no call at all
    with pytest.raises(KafkaException):
        commits.commit(member, {("a", 0): 4})
    with pytest.raises(KafkaException):
        commits.retry(member)  # the rebalance goes on: still kept
    assert commits.kept == {("a", 0): 4}
    commits.retry(member)
    assert member.taken == [{("a", 0): 4}] and commits.kept == {}


def test_kept_offsets_of_partitions_revoked_meanwhile_are_dropped_not_committed():
    member = Member([("a", 0), ("a", 1)], [KafkaError.UNKNOWN_MEMBER_ID, None])
    commits = OffsetCommits(attempts=3, delay_s=0)
    with pytest.raises(KafkaException):
        commits.commit(member, {("a", 0): 5, ("a", 1): 7})
    member.held = [("a", 1)]  # partition 0 went to another member, which starts from the committed offset
    commits.retry(member)
    assert member.taken == [{("a", 1): 7}]


def test_a_transient_error_is_retried_in_place_and_an_outage_keeps_the_offsets_too():
    member = Member([("a", 0)], [KafkaError._TRANSPORT, None])
    commits = OffsetCommits(attempts=3, delay_s=0)
    commits.commit(member, {("a", 0): 2})
    assert member.taken == [{("a", 0): 2}]
    down = Member([("a", 0)], [KafkaError._TRANSPORT] * 3)
    with pytest.raises(KafkaException) as refused:
        commits.commit(down, {("a", 0): 3})
    assert not left_group(refused.value) and commits.kept == {("a", 0): 3}
