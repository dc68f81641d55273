"""The audit log: what happened to a migration, and the outbox the events relay publishes from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reshard.control.base import Records


class AuditLog(Records):
    """Reading the audit log and moving the events relay's cursor along it."""

    def record_event(self, migration: str | None, event: str, **detail: Any) -> None:
        """An audit row (and so a `reshard.events` record); inside a unit of work, part of it."""
        with self.connect() as conn:
            self._audit(conn, migration, event, **detail)

    def claim_relay(self, topic: str) -> int | None:
        """Inside a unit of work: lock the relay cursor of ``topic`` and return the last audit
        id published, or None when another relay holds it right now."""
        with self.connect() as conn:
            conn.execute("INSERT INTO reshard.event_relay (topic) VALUES (%s) ON CONFLICT DO NOTHING", (topic,))
            row = conn.execute("SELECT last_id FROM reshard.event_relay WHERE topic = %s FOR UPDATE SKIP LOCKED",
                               (topic,)).fetchone()
        return None if row is None else row["last_id"]

    def audit_after(self, after_id: int, limit: int) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT id, at, migration, actor, event, detail FROM reshard.audit_log WHERE id > %s ORDER BY id LIMIT %s",
                (after_id, limit),
            ).fetchall()

    def advance_relay(self, topic: str, last_id: int) -> None:
        with self.connect() as conn:
            conn.execute("UPDATE reshard.event_relay SET last_id = %s WHERE topic = %s", (last_id, topic))

    def migration_events_after(self, migration: str, after_id: int, limit: int) -> list[dict]:
        """The migration's audit entries after ``after_id``, oldest first (`reshard events --follow`)."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT id, at, event, actor, detail FROM reshard.audit_log WHERE migration = %s AND id > %s "
                "ORDER BY id LIMIT %s", (migration, after_id, limit)).fetchall()

    def recent_events(self, migration: str, limit: int) -> list[dict]:
        """The migration's newest audit entries, oldest first."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT id, at, event, detail FROM reshard.audit_log WHERE migration = %s ORDER BY id DESC LIMIT %s",
                (migration, limit),
            ).fetchall()
        return rows[::-1]

    def events_since(self, migration: str, since: datetime, kinds: tuple[str, ...]) -> list[dict]:
        """The migration's audit entries of these kinds recorded after ``since``, oldest first."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT at, event, detail FROM reshard.audit_log WHERE migration = %s AND at > %s "
                "AND event = ANY(%s) ORDER BY id", (migration, since, list(kinds))).fetchall()

    def last_verification(self, migration: str) -> dict | None:
        return self.last_event(migration, "verify")

    def last_event(self, migration: str, event: str) -> dict | None:
        """The newest audit entry of this kind for the migration: its time and detail."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT at, detail FROM reshard.audit_log WHERE migration = %s AND event = %s "
                "ORDER BY id DESC LIMIT 1", (migration, event)
            ).fetchone()
