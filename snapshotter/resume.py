"""What a run of the copy does on a source, decided from what earlier runs recorded.

A first run creates the source's slot with an exported snapshot and copies at it; the
stream starts at the slot's position. A rerun (after a crash, a SIGKILL, a lost session)
finds the slot: the stream still starts at the position recorded the first time, and the
units not finished are copied again from a fresh temporary snapshot (each chunk from its
committed cursor on the target; rows written between the two snapshots reach the targets
through the stream, idempotently). A slot that is gone after its position was recorded
cannot be resumed: the stream lost changes. Pure: unit-tested on plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

from reshard.errors import MigrationError


@dataclass(frozen=True)
class SourceStart:
    create_slot: bool  # a first run: the slot and its exported snapshot are created now
    consistent_lsn: str | None  # where the stream starts, when the slot exists already
    fresh_snapshot: bool  # a rerun with units left: they are copied at a temporary slot's snapshot


def source_start(migration: str, slot: str, cluster: str, *, slot_exists: bool, slot_lsn: str | None,
                 recorded_lsn: str | None, pending_units: int) -> SourceStart:
    if not slot_exists:
        if recorded_lsn:
            raise MigrationError(
                f"replication slot {slot} on {cluster} is gone but migration {migration} recorded it; "
                "the stream cannot continue without it: abort this migration and start a new one"
            )
        return SourceStart(create_slot=True, consistent_lsn=None, fresh_snapshot=False)
    return SourceStart(create_slot=False, consistent_lsn=str(recorded_lsn or slot_lsn), fresh_snapshot=pending_units > 0)


def chunk_count(estimated_rows: int, workers: int, batch_rows: int) -> int:
    """Chunks a unit's key range is split into: one per copy worker, but no chunk under a
    batch (a small table is one chunk), and at least one."""
    return max(1, min(workers, -(-estimated_rows // batch_rows)))
