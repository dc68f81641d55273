"""The applier's Kafka offset commits, none of them lost to a rebalance.

A batch's offsets are committed once its effects committed on the targets. Kafka refuses a
commit while the group rebalances (REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION), from a member
it dropped (UNKNOWN_MEMBER_ID), or cannot take it (unreachable). Under the cooperative-sticky
assignment a member keeps, across a rebalance, the partitions it still owns and its position in
them: the records of a refused commit never come back to it. A refused commit stayed lost
until the partition's next batch, and once the changes stopped a catch-up proof waited on it
for ever (CI: the commit of a cutover's last batch, refused while its new reverse streams
joined the group). Refused offsets are kept and committed again with the next commit, and by
``retry`` (at the applier's heartbeat and before its partitions are revoked); offsets of a
partition this member no longer holds are dropped: its new owner starts from the committed
offset, and the per-key positions skip what was applied twice.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from reshard.retry import retry

log = logging.getLogger("reshard.cdc_applier.commits")
LEFT_GROUP = (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
              KafkaError._STATE)

Offsets = dict[tuple[str, int], int]


def left_group(exc: BaseException) -> bool:
    """Kafka refused the commit because of the group (a rebalance, a dropped member), not
    because it is unreachable."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() in LEFT_GROUP


class OffsetCommits:
    def __init__(self, attempts: int = 8, delay_s: float = 0.5):
        self.kept: Offsets = {}  # refused, to be committed again (partition -> next offset)
        self.attempts = attempts
        self.delay_s = delay_s

    def commit(self, consumer: Consumer, offsets: Offsets) -> None:
        """Commit ``offsets`` and whatever was kept from refused commits (of partitions this
        member still holds). A transient error is retried here; a refusal keeps them all and
        raises the KafkaException (the caller tells a rebalance from an outage)."""
        wanted = {**self._held(consumer), **offsets}  # a later batch's offset supersedes a kept one
        if not wanted:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in wanted.items()]
        try:
            retry(lambda: consumer.commit(offsets=tps, asynchronous=False),
                  on=lambda exc: isinstance(exc, KafkaException) and not left_group(exc),
                  attempts=self.attempts, delay=self.delay_s)
        except KafkaException as exc:
            if not self.kept:
                log.warning("Kafka refused an offset commit of %d partition(s) (%s); the batch is applied, and "
                            "its offsets are kept and committed again", len(wanted), exc.args[0] if exc.args else exc)
            self.kept = wanted
            raise
        if self.kept:
            log.info("committed the offsets Kafka had refused (%d partition(s))", len(self.kept))
        self.kept = {}

    def retry(self, consumer: Consumer) -> None:
        """Commit what was kept, if anything (KafkaException as ``commit``)."""
        if self.kept:
            self.commit(consumer, {})

    def _held(self, consumer: Consumer) -> Offsets:
        """The kept offsets of partitions this member holds now; the others are forgotten."""
        if not self.kept:
            return {}
        held = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        self.kept = {tp: o for tp, o in self.kept.items() if tp in held}
        return self.kept
