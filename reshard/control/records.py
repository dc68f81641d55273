"""Migrations: their plan, settings and lifecycle state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from reshard.control import states
from reshard.control.base import actor
from reshard.control.maps import MapRecords
from reshard.control.states import State
from reshard.errors import MigrationError
from reshard.maps.planner import Plan, overlap, plan


@dataclass
class MigrationRecord:
    name: str
    from_epoch: int
    to_epoch: int
    state: str
    moves: list[dict]
    settings: dict
    error: str | None
    created_at: datetime
    updated_at: datetime
    sources: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "from_epoch": self.from_epoch, "to_epoch": self.to_epoch,
            "state": self.state, "moves": self.moves, "settings": self.settings, "error": self.error,
            "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat(),
        }


class MigrationRecords(MapRecords):
    """A migration's row: created once for a plan, moved through the lifecycle (states.py)."""

    def check_no_overlap(self, name: str, p: Plan) -> None:
        """See ``_check_no_overlap``; on a connection of its own or in a unit of work."""
        with self.connect() as conn:
            self._check_no_overlap(conn, name, p)

    def _check_no_overlap(self, conn: psycopg.Connection[Any], name: str, p: Plan) -> None:
        """Refuse a migration whose moving keys intersect a live migration's (invariant 8):
        two migrations copying and streaming the same keys would overwrite each other, and
        the abort of one would delete the other's rows."""
        for other in conn.execute(
            "SELECT name, from_epoch, to_epoch, state FROM reshard.migrations WHERE name <> %s AND state = ANY(%s) "
            "ORDER BY created_at", (name, list(states.LIVE)),
        ).fetchall():
            why = overlap(p, plan(self._map_in(conn, other["from_epoch"]), self._map_in(conn, other["to_epoch"])))
            if why:
                raise MigrationError(
                    f"migration {name} would move keys that migration {other['name']} ({other['state']}) already "
                    f"moves: {why}. Complete or abort {other['name']} first, or choose a map that moves other keys; "
                    "nothing was created"
                )

    def create_migration(self, name: str, from_epoch: int, to_epoch: int, p: Plan, settings: dict) -> MigrationRecord:
        moves = [m.to_dict() for m in p.moves]
        with self.connect() as conn, conn.transaction():
            # one creation at a time: the overlap check and the insert are one decision, and a
            # concurrent create of the same name waits here, then finds the row instead of failing
            conn.execute("LOCK TABLE reshard.migrations IN SHARE ROW EXCLUSIVE MODE")
            row = conn.execute("SELECT * FROM reshard.migrations WHERE name = %s FOR UPDATE", (name,)).fetchone()
            if row is not None:
                if (row["from_epoch"], row["to_epoch"]) != (from_epoch, to_epoch):
                    raise MigrationError(
                        f"migration {name} already exists for epochs {row['from_epoch']} -> {row['to_epoch']}; "
                        "pick another name"
                    )
                return self._record(conn, row)
            self._check_no_overlap(conn, name, p)
            conn.execute(
                "INSERT INTO reshard.migrations (name, from_epoch, to_epoch, state, moves, settings) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (name, from_epoch, to_epoch, State.PLANNED, Jsonb(moves), Jsonb(settings)),
            )
            self._audit(conn, name, "migration.created", from_epoch=from_epoch, to_epoch=to_epoch, moves=moves)
            row = conn.execute("SELECT * FROM reshard.migrations WHERE name = %s", (name,)).fetchone()
            assert row is not None  # inserted above, in this transaction
            return self._record(conn, row)

    def _record(self, conn: psycopg.Connection[Any], row: dict) -> MigrationRecord:
        sources = conn.execute(
            "SELECT * FROM reshard.migration_sources WHERE migration = %s ORDER BY cluster", (row["name"],)
        ).fetchall()
        return MigrationRecord(
            row["name"], row["from_epoch"], row["to_epoch"], row["state"], row["moves"], row["settings"],
            row["error"], row["created_at"], row["updated_at"], sources,
        )

    def forget_planned(self, name: str) -> bool:
        """Delete a migration that is still ``planned`` and has nothing on any cluster (a
        ``start`` whose checks failed), so a corrected rerun starts clean. Returns whether
        it was deleted; the audit log keeps that it existed."""
        with self.connect() as conn, conn.transaction():
            row = conn.execute(
                "SELECT 1 FROM reshard.migrations m WHERE name = %s AND state = %s AND NOT EXISTS ("
                "SELECT 1 FROM reshard.migration_sources s WHERE s.migration = m.name) FOR UPDATE",
                (name, State.PLANNED)).fetchone()
            if row is None:
                return False
            for table in ("copy_progress", "cutover_steps", "cutover_attempts", "waves", "reverse_streams"):
                conn.execute(sql.SQL("DELETE FROM reshard.{} WHERE migration = %s").format(sql.Identifier(table)), (name,))
            conn.execute("DELETE FROM reshard.migrations WHERE name = %s", (name,))
            self._audit(conn, name, "migration.forgotten", reason="start failed before creating anything")
            return True

    def migration(self, name: str) -> MigrationRecord:
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM reshard.migrations WHERE name = %s", (name,)).fetchone()
            if row is None:
                known = [r["name"] for r in conn.execute("SELECT name FROM reshard.migrations ORDER BY name")]
                raise MigrationError(f"no migration named {name!r} (known: {', '.join(known) or 'none'})")
            return self._record(conn, row)

    def migrations(self) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT name, from_epoch, to_epoch, state, settings, updated_at FROM reshard.migrations "
                "ORDER BY created_at"
            ).fetchall()

    def plan_of(self, rec: MigrationRecord) -> Plan:
        return plan(self.get_map(rec.from_epoch), self.get_map(rec.to_epoch))

    def set_state(self, name: str, new: str, error: str | None = None, *, why: str = "",
                  only_from: tuple[str, ...] | None = None, **detail: Any) -> str:
        """Move the migration to ``new``, recording who (this process) and why; refuses
        transitions the lifecycle forbids (reshard/control/states.py). With ``only_from``,
        moves only from those states and otherwise leaves it (a compare-and-set, for a
        process handing back a state another may have moved on from). Returns the old state."""
        with self.connect() as conn, conn.transaction():
            row = conn.execute("SELECT state FROM reshard.migrations WHERE name = %s FOR UPDATE", (name,)).fetchone()
            if row is None:
                raise MigrationError(f"no migration named {name!r}")
            old = row["state"]
            if only_from is not None and old not in only_from:
                return old
            if not states.can_move(old, new):
                raise MigrationError(f"migration {name} is {old}; it cannot become {new}")
            conn.execute(
                "UPDATE reshard.migrations SET state = %s, error = %s, updated_at = now() WHERE name = %s",
                (new, error, name),
            )
            if old != new or error:
                self._audit(conn, name, "migration.state", old=old, new=new, error=error, by=actor(), why=why,
                           **detail)
            return old

    def update_settings(self, name: str, **settings: Any) -> None:
        """Merge ``settings`` into the migration's (e.g. its reconciliation checks)."""
        with self.connect() as conn:
            row = conn.execute("UPDATE reshard.migrations SET settings = settings || %s, updated_at = now() "
                               "WHERE name = %s RETURNING name", (Jsonb(settings), name)).fetchone()
            if row is None:
                raise MigrationError(f"no migration named {name!r}")
            self._audit(conn, name, "migration.settings", changed=sorted(settings))

    def set_control(self, name: str, event: str, **control: Any) -> dict:
        """Steer a running migration (reshard/live_control.py): merge ``control`` into its
        ``settings.control`` in one statement (two operators cannot lose each other's change),
        audited as ``event``; returns the control now in force."""
        with self.connect() as conn:
            row = conn.execute(
                "UPDATE reshard.migrations SET settings = jsonb_set(settings, '{control}', "
                "coalesce(settings->'control', '{}'::jsonb) || %s), updated_at = now() WHERE name = %s "
                "RETURNING settings->'control' AS control", (Jsonb(control), name)).fetchone()
            if row is None:
                raise MigrationError(f"no migration named {name!r}")
            self._audit(conn, name, event, **control)
            return row["control"]

    def set_error(self, name: str, error: str | None) -> None:
        with self.connect() as conn:
            conn.execute("UPDATE reshard.migrations SET error = %s, updated_at = now() WHERE name = %s", (error, name))
            if error:
                self._audit(conn, name, "migration.error", error=error)
