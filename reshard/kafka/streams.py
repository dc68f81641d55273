"""A stream: the changes of one cluster flowing, through one Debezium connector, one way.

A migration has a forward stream per source cluster (source -> targets) from the
start, and after cutover a reverse stream per target cluster (target -> sources),
which keeps rollback possible. Each stream owns its slot, publication, connector and
topics, all named here.

Echoes: the forward applier's writes on a target would come back through the reverse
stream, and the reverse applier's writes on a source through the forward stream.
Each applier direction tags its sessions with a PostgreSQL replication origin;
Debezium reports the origin of every change (``source.origin``). Where the Connect
worker has reshard's echo filter (connectors/echo-filter), each stream's connector
drops the other direction's changes before they are produced; the applier skips any
that still arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotations: streams.py is imported by the store itself
    from reshard.control.records import MigrationRecord
    from reshard.control.store import ControlStore
    from reshard.maps.planner import Plan

class Direction(StrEnum):
    """Which way a stream's changes flow: forward (sources to targets) or in reverse."""

    FORWARD = "fwd"
    REVERSE = "rev"


@dataclass(frozen=True)
class Stream:
    migration: str
    direction: Direction
    cluster: str  # where the changes are captured
    generation: int = 0  # reverse streams: which incarnation (they are recreated after a rollback)

    @property
    def slot(self) -> str:
        base = f"reshard_{self.migration}_{self.cluster}"
        return base if self.direction == Direction.FORWARD else f"{base}_rev"

    @property
    def publication(self) -> str:
        return self.slot

    @property
    def _way(self) -> str:
        # a new incarnation never reuses topic or connector names: the consumer group's
        # committed offsets (and Connect's) for the old topics must not apply to the new ones
        return f"{self.direction}{self.generation}" if self.generation else self.direction

    @property
    def connector(self) -> str:
        return f"reshard-{self.migration}-{self._way}-{self.cluster}"

    @property
    def prefix(self) -> str:
        return f"reshard.{self.migration}.{self._way}.{self.cluster}"

    def topic(self, table: str) -> str:
        return f"{self.prefix}.{table}"

    @property
    def heartbeat_topics(self) -> list[str]:
        """Debezium's heartbeat topic and the topic of reshard's heartbeat table."""
        return [f"reshard-heartbeat.{self.prefix}", f"{self.prefix}.reshard.heartbeat"]

    @property
    def writer_origin(self) -> str:
        """The origin this stream's applier tags its writes with."""
        return f"reshard_{self.direction}_{self.migration}"

    @property
    def echo_origin_prefix(self) -> str:
        """Changes whose origin starts with this were written by the other direction's
        applier (one origin of its pool, ``<writer_origin>_<n>``): skip them."""
        other = Direction.REVERSE if self.direction == Direction.FORWARD else Direction.FORWARD
        return f"reshard_{other}_{self.migration}_"

    @property
    def applied_key(self) -> str:
        """The key of this direction's per-row positions in reshard.applied_rows
        (each direction counts positions in its own cluster's WAL)."""
        return self.migration if self.direction == Direction.FORWARD else f"{self.migration}:rev"


def forward(migration: str, source: str) -> Stream:
    return Stream(migration, Direction.FORWARD, source)


def reverse(migration: str, target: str, generation: int) -> Stream:
    return Stream(migration, Direction.REVERSE, target, generation)


def streams_of(store: ControlStore, rec: MigrationRecord, plan: Plan) -> list[Stream]:
    """Forward streams from every source; reverse streams the cutover recorded."""
    out = [forward(rec.name, s) for s in plan.sources()]
    out += [reverse(rec.name, r["cluster"], r["generation"]) for r in store.reverse_streams(rec.name)]
    return out


def dlq_topic(migration: str) -> str:
    """The migration's dead-letter topic (cdc_applier/dlq.py writes it)."""
    return f"reshard.{migration}.dlq"
