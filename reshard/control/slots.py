"""Where each stream's slot was made, and what the last failover did to it (failover.py judges)."""

from __future__ import annotations

from reshard.control.base import Records


class SlotRecords(Records):
    """Slot origins: recorded when reshard makes a slot, moved on when a failover carried it,
    marked lost when one did not."""

    def record_slot_origin(self, migration: str, cluster: str, slot: str, system_id: str, timeline: int) -> None:
        """A slot made now (again, after an abort or a new reverse stream: a fresh start)."""
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO reshard.slot_origins (migration, cluster, slot_name, system_id, timeline) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (migration, slot_name) DO UPDATE SET "
                "cluster = EXCLUDED.cluster, system_id = EXCLUDED.system_id, timeline = EXCLUDED.timeline, "
                "lineage = 'same', why = NULL, noted_at = now()",
                (migration, cluster, slot, system_id, timeline))

    def slot_origins(self, migration: str) -> dict[str, dict]:
        """slot name -> its row (cluster, system_id, timeline, lineage, why, noted_at)."""
        with self.connect() as conn:
            rows = conn.execute("SELECT * FROM reshard.slot_origins WHERE migration = %s", (migration,)).fetchall()
        return {r["slot_name"]: r for r in rows}

    def forget_slot_origin(self, migration: str, slot: str) -> None:
        """reshard is about to drop the slot itself (abort, rollback, complete)."""
        with self.connect() as conn:
            conn.execute("DELETE FROM reshard.slot_origins WHERE migration = %s AND slot_name = %s", (migration, slot))

    def note_slot(self, migration: str, slot: str, lineage: str, why: str, timeline: int | None = None) -> bool:
        """What a failover did to the slot: carried (its origin moves to the new timeline) or lost
        (for good: only a new slot, recorded anew, clears it). Audited. False when the slot has no
        origin any more (reshard dropped it meanwhile) or was already lost."""
        with self.connect() as conn:
            changed = conn.execute(
                "UPDATE reshard.slot_origins SET lineage = %s, why = %s, timeline = coalesce(%s, timeline), "
                "noted_at = now() WHERE migration = %s AND slot_name = %s AND lineage <> 'lost' "
                "RETURNING cluster", (lineage, why, timeline, migration, slot)).fetchone()
            if changed:
                self._audit(conn, migration, f"stream.{lineage}", slot=slot, cluster=changed["cluster"], why=why)
            return changed is not None
