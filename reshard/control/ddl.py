"""Schema changes a migration's streams carried: what each asked, where it was applied, and at which positions."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from reshard.control.base import Records
from reshard.errors import MigrationError


class DdlRecords(Records):
    """Written by the applier's DDL follower (reshard/ddl/follower.py); read by status and the exporter."""

    def record_ddl(self, migration: str, direction: str, cluster: str, entry_id: int, tbl: str, statement: str,
                   lsn: str, ops: list[dict], status: str, reason: str | None, pass_mark: str | None) -> bool:
        """A change read from ``cluster``'s log; False when it was recorded before (a rerun)."""
        with self.connect() as conn:
            made = conn.execute(
                "INSERT INTO reshard.ddl_changes (migration, direction, cluster, entry_id, tbl, statement, lsn, ops, "
                "status, reason, pass_mark) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING entry_id",
                (migration, direction, cluster, entry_id, tbl, statement, lsn, Jsonb(ops), status, reason,
                 pass_mark)).fetchone()
            if made and status == "paused":
                self._audit(conn, migration, "ddl.paused", direction=direction, cluster=cluster, entry=entry_id,
                            table=tbl, statement=statement, lsn=lsn, reason=reason)
            return made is not None

    def ddl_changes(self, migration: str, direction: str | None = None) -> list[dict[str, Any]]:
        """Every recorded change, in the order recorded."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM reshard.ddl_changes WHERE migration = %s AND (%s::text IS NULL OR direction = %s) "
                "ORDER BY recorded_at, cluster, entry_id", (migration, direction, direction)).fetchall()

    def last_ddl_entry(self, migration: str, direction: str, cluster: str) -> int:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT coalesce(max(entry_id), 0) AS n FROM reshard.ddl_changes "
                "WHERE migration = %s AND direction = %s AND cluster = %s", (migration, direction, cluster)).fetchone()
        return int(row["n"]) if row else 0

    def set_ddl_status(self, migration: str, direction: str, cluster: str, entry_id: int, status: str) -> None:
        with self.connect() as conn:
            conn.execute(
                "UPDATE reshard.ddl_changes SET status = %s, updated_at = now() "
                "WHERE migration = %s AND direction = %s AND cluster = %s AND entry_id = %s",
                (status, migration, direction, cluster, entry_id))

    def ddl_passed(self, migration: str, direction: str, cluster: str, entry_id: int) -> None:
        """Every change of ``cluster``'s stream before this one is applied at its destinations."""
        with self.connect() as conn:
            conn.execute(
                "UPDATE reshard.ddl_changes SET passed_at = now(), updated_at = now() WHERE migration = %s "
                "AND direction = %s AND cluster = %s AND entry_id = %s AND passed_at IS NULL",
                (migration, direction, cluster, entry_id))

    def record_ddl_applied(self, migration: str, direction: str, destination: str, op: dict,
                           positions: dict[str, str]) -> None:
        """An op is in effect on ``destination`` (applied now, or found already there). Audited."""
        with self.connect() as conn:
            made = conn.execute(
                "INSERT INTO reshard.ddl_applied (migration, direction, destination, statement, tbl, phase, positions) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING destination",
                (migration, direction, destination, op["statement"], op["table"], op["phase"],
                 Jsonb(positions))).fetchone()
            if made:
                self._audit(conn, migration, "ddl.applied", direction=direction, destination=destination,
                            table=op["table"], what=op["what"], statement=op["statement"], phase=op["phase"],
                            positions=positions)

    def ddl_applied(self, migration: str) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute("SELECT * FROM reshard.ddl_applied WHERE migration = %s ORDER BY applied_at",
                                (migration,)).fetchall()

    def resolve_ddl(self, migration: str, cluster: str, entry_id: int) -> dict[str, Any]:
        """The operator placed a paused change by hand: the follower moves past it. Audited."""
        with self.connect() as conn:
            row = conn.execute(
                "UPDATE reshard.ddl_changes SET status = 'resolved', updated_at = now() WHERE migration = %s "
                "AND cluster = %s AND entry_id = %s AND status = 'paused' RETURNING *",
                (migration, cluster, entry_id)).fetchone()
            if row is None:
                known = conn.execute(
                    "SELECT status FROM reshard.ddl_changes WHERE migration = %s AND cluster = %s AND entry_id = %s",
                    (migration, cluster, entry_id)).fetchone()
                if known is None:
                    raise MigrationError(f"migration {migration} has no schema change {cluster}#{entry_id} "
                                         "(`reshard ddl list` shows them)")
                raise MigrationError(f"schema change {cluster}#{entry_id} is {known['status']}, not paused; "
                                     "nothing to resolve")
            self._audit(conn, migration, "ddl.resolved", cluster=cluster, entry=entry_id, table=row["tbl"],
                        statement=row["statement"])
            return row
