"""Access to the control database. Every durable fact about a migration goes through here."""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from reshard.control import states
from reshard.errors import Busy, ConfigError, LeaseLost, MigrationError, Unavailable
from reshard.maps.planner import Plan, overlap, plan
from reshard.maps.shardmap import ShardMap, parse_map
from reshard.schema_migrations import upgrade

ACTOR = f"{socket.gethostname()}:{os.getpid()}"
MAP_CHANNEL = "reshard_map"  # NOTIFY channel: payload is the newly active epoch
log = logging.getLogger("reshard.control")


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


def actor() -> str:
    """Who acts: the OS user, host and pid, and the reshard command running (read from
    click's context when the CLI runs; a library caller such as an application's router
    never loads click for it)."""
    click = sys.modules.get("click")
    ctx = click.get_current_context(silent=True) if click is not None else None
    command = ctx.command_path if ctx is not None else ""
    return f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}" + (f" ({command})" if command else "")


# libpq settings every reshard session gets unless its DSN says otherwise: a server or a
# network path that goes away mid-session is noticed in about 20 s, not after the kernel's
# two hours (a frozen server process is not: its kernel still answers, see fence.HOLD_MS)
SESSION_DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "3",
                    "keepalives_count": "3", "tcp_user_timeout": "20000"}


def connect(dsn: str, what: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """psycopg.connect that reports an unreachable server as Unavailable, naming it."""
    given = psycopg.conninfo.conninfo_to_dict(dsn)
    conninfo = psycopg.conninfo.make_conninfo(dsn, **{k: v for k, v in SESSION_DEFAULTS.items() if k not in given})
    try:
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unavailable(f"cannot connect to {what}: {first}") from None


class _Borrowed:
    """A pinned connection used like a fresh one: ``with store.connect() as conn`` commits
    or rolls back at the end of the block but keeps the connection open."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn

    def __enter__(self) -> psycopg.Connection[Any]:
        return self.conn

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.conn.commit()
        else:
            self.conn.rollback()


class ControlStore:
    def __init__(self, dsn: str):
        self.dsn = dsn
        self._schema_ready = False
        self._pinned: psycopg.Connection[Any] | None = None

    @contextmanager
    def pinned(self) -> Iterator[ControlStore]:
        """A store whose calls share one connection: a cutover records many small facts
        inside its write pause, and a connection per record would cost milliseconds each."""
        store = ControlStore(self.dsn)
        store._schema_ready = self._schema_ready
        store._pinned = store.connect()
        try:
            yield store
        finally:
            store._pinned.close()

    def connect(self, **kwargs: Any) -> psycopg.Connection[dict[str, Any]]:
        """A connection to the control database whose rows are dicts (schema upgraded first)."""
        if self._pinned is not None and not kwargs:
            return _Borrowed(self._pinned)  # type: ignore[return-value]
        conn: psycopg.Connection[dict[str, Any]] = connect(self.dsn, "the control database", row_factory=dict_row,
                                                            **kwargs)
        if not self._schema_ready:
            upgrade(conn, "reshard.control.migrations", "control", 7265736861726400, "the control database")
            self._schema_ready = True
        return conn

    # ---- audit ---------------------------------------------------------------
    def audit(self, conn: psycopg.Connection[Any], migration: str | None, event: str, **detail: Any) -> None:
        conn.execute(
            "INSERT INTO reshard.audit_log (migration, actor, event, detail) VALUES (%s, %s, %s, %s)",
            (migration, ACTOR, event, Jsonb(json.loads(json.dumps(detail, default=str)))),
        )

    def record_event(self, migration: str | None, event: str, **detail: Any) -> None:
        """An audit row (and so a `reshard.events` record) on a connection of its own."""
        with self.connect() as conn:
            self.audit(conn, migration, event, **detail)

    # ---- the events outbox ------------------------------------------------------
    def claim_relay(self, conn: psycopg.Connection[Any], topic: str) -> int | None:
        """Inside the caller's transaction: lock the relay cursor of ``topic`` and return the
        last audit id published, or None when another relay holds it right now."""
        conn.execute("INSERT INTO reshard.event_relay (topic) VALUES (%s) ON CONFLICT DO NOTHING", (topic,))
        row = conn.execute("SELECT last_id FROM reshard.event_relay WHERE topic = %s FOR UPDATE SKIP LOCKED",
                           (topic,)).fetchone()
        return None if row is None else row["last_id"]

    def audit_after(self, conn: psycopg.Connection[Any], after_id: int, limit: int) -> list[dict]:
        return conn.execute(
            "SELECT id, at, migration, actor, event, detail FROM reshard.audit_log WHERE id > %s ORDER BY id LIMIT %s",
            (after_id, limit),
        ).fetchall()

    def advance_relay(self, conn: psycopg.Connection[Any], topic: str, last_id: int) -> None:
        conn.execute("UPDATE reshard.event_relay SET last_id = %s WHERE topic = %s", (last_id, topic))

    # ---- shard maps ------------------------------------------------------------
    def register_map(self, m: ShardMap, note: str = "") -> tuple[int, bool]:
        """Store a map version; returns (epoch, created). Re-registering the newest
        version's exact content returns its epoch instead of minting a new one."""
        with self.connect() as conn, conn.transaction():
            conn.execute("LOCK TABLE reshard.shard_maps IN EXCLUSIVE MODE")
            last = conn.execute("SELECT epoch, digest FROM reshard.shard_maps ORDER BY epoch DESC LIMIT 1").fetchone()
            digest = m.digest()
            if last and last["digest"] == digest:
                return last["epoch"], False
            epoch = (last["epoch"] if last else 0) + 1
            conn.execute(
                "INSERT INTO reshard.shard_maps (epoch, name, body, digest, note) VALUES (%s, %s, %s, %s, %s)",
                (epoch, m.name, Jsonb(json.loads(json.dumps(m.to_dict(), default=str))), digest, note),
            )
            self.audit(conn, None, "map.registered", epoch=epoch, digest=digest, note=note)
            return epoch, True

    def find_epoch(self, m: ShardMap) -> int | None:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT epoch FROM reshard.shard_maps WHERE digest = %s ORDER BY epoch DESC LIMIT 1", (m.digest(),)
            ).fetchone()
            return row["epoch"] if row else None

    def get_map(self, epoch: int) -> ShardMap:
        with self.connect() as conn:
            return self._map_in(conn, epoch)

    def active_epoch(self) -> int | None:
        with self.connect() as conn:
            row = conn.execute("SELECT epoch FROM reshard.active_map").fetchone()
            return row["epoch"] if row else None

    def activate(self, conn: psycopg.Connection[Any], epoch: int) -> None:
        """Make ``epoch`` the routing map (inside the caller's transaction). Routers
        listening on ``reshard_map`` hear the new epoch when the transaction commits."""
        conn.execute(
            "INSERT INTO reshard.active_map (singleton, epoch) VALUES (true, %s) "
            "ON CONFLICT (singleton) DO UPDATE SET epoch = EXCLUDED.epoch, switched_at = now()",
            (epoch,),
        )
        conn.execute("SELECT pg_notify(%s, %s)", (MAP_CHANNEL, str(epoch)))
        self.audit(conn, None, "map.activated", epoch=epoch)

    def require_active(self) -> tuple[int, ShardMap]:
        """The routing map and its epoch; a clear error when no map was ever activated."""
        active = self.active()
        if active is None:
            raise ConfigError("no active shard map yet: pass --from, or register one with `reshard map register --initial`")
        return active

    def active(self) -> tuple[int, ShardMap] | None:
        """The routing map and its epoch, read in one statement."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT m.epoch, m.body FROM reshard.active_map a JOIN reshard.shard_maps m USING (epoch)"
            ).fetchone()
        if row is None:
            return None
        return row["epoch"], parse_map(row["body"], where=f"map epoch {row['epoch']}")

    def map_history(self) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT m.epoch, m.name, m.digest, m.note, m.registered_at, (a.epoch IS NOT NULL) AS active "
                "FROM reshard.shard_maps m LEFT JOIN reshard.active_map a ON a.epoch = m.epoch ORDER BY m.epoch"
            ).fetchall()

    # ---- migrations ------------------------------------------------------------
    def _map_in(self, conn: psycopg.Connection[Any], epoch: int) -> ShardMap:
        row = conn.execute("SELECT body FROM reshard.shard_maps WHERE epoch = %s", (epoch,)).fetchone()
        if row is None:
            raise ConfigError(f"no shard map with epoch {epoch}")
        return parse_map(row["body"], where=f"map epoch {epoch}")

    def check_no_overlap(self, conn: psycopg.Connection[Any], name: str, p: Plan) -> None:
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
            self.check_no_overlap(conn, name, p)
            conn.execute(
                "INSERT INTO reshard.migrations (name, from_epoch, to_epoch, state, moves, settings) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (name, from_epoch, to_epoch, states.PLANNED, Jsonb(moves), Jsonb(settings)),
            )
            self.audit(conn, name, "migration.created", from_epoch=from_epoch, to_epoch=to_epoch, moves=moves)
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
                (name, states.PLANNED)).fetchone()
            if row is None:
                return False
            for table in ("copy_progress", "cutover_steps", "cutover_attempts", "waves", "reverse_streams"):
                conn.execute(f"DELETE FROM reshard.{table} WHERE migration = %s", (name,))
            conn.execute("DELETE FROM reshard.migrations WHERE name = %s", (name,))
            self.audit(conn, name, "migration.forgotten", reason="start failed before creating anything")
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
                self.audit(conn, name, "migration.state", old=old, new=new, error=error, by=actor(), why=why,
                           **detail)
            return old

    def update_settings(self, name: str, **settings: Any) -> None:
        """Merge ``settings`` into the migration's (e.g. its reconciliation checks)."""
        with self.connect() as conn:
            row = conn.execute("UPDATE reshard.migrations SET settings = settings || %s, updated_at = now() "
                               "WHERE name = %s RETURNING name", (Jsonb(settings), name)).fetchone()
            if row is None:
                raise MigrationError(f"no migration named {name!r}")
            self.audit(conn, name, "migration.settings", changed=sorted(settings))

    def set_error(self, name: str, error: str | None) -> None:
        with self.connect() as conn:
            conn.execute("UPDATE reshard.migrations SET error = %s, updated_at = now() WHERE name = %s", (error, name))
            if error:
                self.audit(conn, name, "migration.error", error=error)

    # ---- sources, copy progress, workers ---------------------------------------
    def record_source(self, migration: str, cluster: str, **fields: Any) -> None:
        """Insert or update the migration's row for a source cluster with ``fields``."""
        with self.connect() as conn, conn.transaction():
            sets = ", ".join(f"{k} = %s" for k in fields)
            updated = conn.execute(
                f"UPDATE reshard.migration_sources SET {sets} WHERE migration = %s AND cluster = %s",
                [*fields.values(), migration, cluster],
            ).rowcount if fields else 0
            if not updated:
                cols = ["migration", "cluster", *fields]
                conn.execute(
                    f"INSERT INTO reshard.migration_sources ({', '.join(cols)}) "
                    f"VALUES ({', '.join(['%s'] * len(cols))}) ON CONFLICT DO NOTHING",
                    [migration, cluster, *fields.values()],
                )

    def record_copy(self, migration: str, move_id: str, tbl: str, **fields: Any) -> None:
        cols = ["migration", "move_id", "tbl", *fields, "updated_at"]
        vals = [migration, move_id, tbl, *fields.values()]
        updates = ", ".join([f"{k} = EXCLUDED.{k}" for k in fields] + ["updated_at = now()"])
        with self.connect() as conn, conn.transaction():
            conn.execute(
                f"INSERT INTO reshard.copy_progress ({', '.join(cols)}) "
                f"VALUES ({', '.join(['%s'] * len(vals))}, now()) "
                f"ON CONFLICT (migration, move_id, tbl) DO UPDATE SET {updates}",
                vals,
            )
            self.audit(conn, migration, "copy.checkpoint", move=move_id, table=tbl, **fields)

    def copy_progress(self, migration: str) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT * FROM reshard.copy_progress WHERE migration = %s ORDER BY move_id, tbl", (migration,)
            ).fetchall()

    def heartbeat(self, migration: str, worker: str, kind: str, stats: dict) -> None:
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO reshard.workers (migration, worker, kind, pid, stats) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (migration, worker) DO UPDATE SET last_seen = now(), stats = EXCLUDED.stats, "
                "pid = EXCLUDED.pid, stopped_at = NULL",
                (migration, worker, kind, os.getpid(), Jsonb(stats)),
            )

    def record_sample(self, migration: str, worker: str, records: int, applied: int, lag_seconds: float | None,
                      lag_records: int | None) -> None:
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO reshard.apply_samples (migration, worker, records, applied, lag_seconds, lag_records) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (migration, worker, records, applied, lag_seconds, lag_records),
            )

    def samples(self, migration: str) -> list[dict]:
        """Every applier sample of the migration, oldest first."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT worker, at, records, applied, lag_seconds, lag_records FROM reshard.apply_samples "
                "WHERE migration = %s ORDER BY at, worker", (migration,),
            ).fetchall()

    def worker_stopped(self, migration: str, worker: str, stats: dict) -> None:
        """A worker that stops cleanly says so: it is no longer live from this moment."""
        with self.connect() as conn:
            conn.execute("UPDATE reshard.workers SET stopped_at = now(), last_seen = now(), stats = %s "
                         "WHERE migration = %s AND worker = %s", (Jsonb(stats), migration, worker))

    def prune_workers(self, migration: str, keep_s: float = 3600.0) -> int:
        """Forget workers of the migration that stopped, or stopped reporting, over ``keep_s`` ago."""
        with self.connect() as conn:
            return conn.execute(
                "DELETE FROM reshard.workers WHERE migration = %s AND last_seen < now() - make_interval(secs => %s)",
                (migration, keep_s)).rowcount

    def workers(self, migration: str) -> list[dict]:
        """Every recorded worker; ``live`` when it reported in the last 10 s and did not stop."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT worker, kind, pid, started_at, last_seen, stopped_at, stats, "
                "extract(epoch FROM now() - last_seen) AS idle_s, "
                "(stopped_at IS NULL AND last_seen > now() - interval '10 seconds') AS live "
                "FROM reshard.workers WHERE migration = %s ORDER BY worker",
                (migration,),
            ).fetchall()

    # ---- routers ------------------------------------------------------------------------
    def report_router(self, router: str, epoch: int, started_at: datetime, counters: dict,
                      shadow: dict) -> None:
        """A router's cumulative counters (reshard/router.py); old reports are pruned."""
        host, pid = router.split(":")[:2]
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO reshard.router_reports (router, host, pid, epoch, started_at, counters, shadow) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (router) DO UPDATE SET at = now(), "
                "epoch = EXCLUDED.epoch, counters = EXCLUDED.counters, shadow = EXCLUDED.shadow",
                (router, host, int(pid), epoch, started_at, Jsonb(counters), Jsonb(shadow)))
            conn.execute("DELETE FROM reshard.router_reports WHERE at < now() - interval '1 day'")

    def router_reports(self, within_s: float = 60.0) -> list[dict]:
        """Routers that reported in the last ``within_s`` seconds, with their counters."""
        with self.connect() as conn:
            return conn.execute(
                "SELECT router, host, pid, epoch, started_at, at, counters, shadow, "
                "extract(epoch FROM now() - at) AS age_s FROM reshard.router_reports "
                "WHERE at > now() - make_interval(secs => %s) ORDER BY router", (within_s,)).fetchall()

    # ---- reverse streams, waves, cutover attempts ----------------------------------------
    def reverse_streams(self, migration: str) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT cluster, slot_name, publication, start_lsn::text AS start_lsn, connector, topics, generation, "
                "created_at "
                "FROM reshard.reverse_streams WHERE migration = %s ORDER BY cluster", (migration,)
            ).fetchall()

    def record_reverse(self, migration: str, cluster: str, slot: str, publication: str, start_lsn: str,
                       connector: str, topics: list[str], generation: int) -> None:
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO reshard.reverse_streams (migration, cluster, slot_name, publication, start_lsn, "
                "connector, topics, generation) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (migration, cluster) DO UPDATE SET topics = EXCLUDED.topics, connector = EXCLUDED.connector",
                (migration, cluster, slot, publication, start_lsn, connector, topics, generation),
            )

    def next_generation(self, migration: str) -> int:
        """A number no earlier reverse stream of the migration used: the next attempt's."""
        with self.connect() as conn:
            return conn.execute("SELECT coalesce(max(attempt), 0) + 1 AS n FROM reshard.cutover_attempts "
                                "WHERE migration = %s", (migration,)).fetchone()["n"]

    def forget_reverse(self, migration: str, cluster: str) -> None:
        with self.connect() as conn:
            conn.execute("DELETE FROM reshard.reverse_streams WHERE migration = %s AND cluster = %s",
                         (migration, cluster))

    def waves(self, migration: str) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT wave, buckets, epoch, state, pause_ms, drain_ms, cut_at FROM reshard.waves "
                "WHERE migration = %s ORDER BY wave", (migration,)
            ).fetchall()

    def record_wave(self, conn: psycopg.Connection[Any], migration: str, wave: int,
                    buckets: dict[str, list[int]] | None,
                    epoch: int, state: str, pause_ms: float | None = None, drain_ms: float | None = None) -> None:
        conn.execute(
            "INSERT INTO reshard.waves (migration, wave, buckets, epoch, state, pause_ms, drain_ms, cut_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (migration, wave) DO UPDATE SET "
            "state = EXCLUDED.state, epoch = EXCLUDED.epoch, pause_ms = coalesce(EXCLUDED.pause_ms, reshard.waves.pause_ms), "
            "drain_ms = coalesce(EXCLUDED.drain_ms, reshard.waves.drain_ms)",
            (migration, wave, Jsonb(buckets) if buckets is not None else None, epoch, state, pause_ms, drain_ms),
        )

    def settled_state(self, migration: str) -> str:
        """Where the migration rests when nothing runs on it, from its waves and the routing
        map: baking once routing is its target map, rolled_back after a rollback, else
        streaming (also with canary waves cut), or shadowing while shadow reads are on."""
        rec = self.migration(migration)
        streaming = states.SHADOWING if rec.settings.get("shadow") else states.STREAMING
        waves = self.waves(migration)
        if any(w["state"] == "cut" for w in waves):
            active = self.active()
            final = self.get_map(rec.to_epoch)
            return states.BAKING if active is not None and active[1].digest() == final.digest() else streaming
        if any(w["state"] == "rolled_back" for w in waves):
            return states.ROLLED_BACK
        return streaming

    def roll_back_waves(self, conn: psycopg.Connection[Any], migration: str) -> None:
        """Every cut wave is rolled back (in the caller's transaction: the activation's)."""
        conn.execute("UPDATE reshard.waves SET state = 'rolled_back' WHERE migration = %s AND state = 'cut'",
                     (migration,))

    def set_wave_pause(self, migration: str, wave: int, pause_ms: float) -> None:
        with self.connect() as conn:
            conn.execute("UPDATE reshard.waves SET pause_ms = %s WHERE migration = %s AND wave = %s",
                         (pause_ms, migration, wave))

    def begin_attempt(self, migration: str, kind: str, wave: int | None, plan: dict) -> int:
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT 1 FROM reshard.migrations WHERE name = %s FOR UPDATE", (migration,))
            n = conn.execute("SELECT coalesce(max(attempt), 0) + 1 AS n FROM reshard.cutover_attempts "
                             "WHERE migration = %s", (migration,)).fetchone()["n"]
            conn.execute(
                "INSERT INTO reshard.cutover_attempts (migration, attempt, kind, wave, state, plan) "
                "VALUES (%s, %s, %s, %s, 'running', %s)",
                (migration, n, kind, wave, Jsonb(json.loads(json.dumps(plan, default=str)))),
            )
            self.audit(conn, migration, f"{kind}.started", attempt=n, wave=wave)
            return n

    def running_attempts(self, migration: str) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT attempt, kind, wave, plan, started_at FROM reshard.cutover_attempts "
                "WHERE migration = %s AND state = 'running' ORDER BY attempt", (migration,)
            ).fetchall()

    def step(self, migration: str, attempt: int, step: str, status: str, **detail: Any) -> None:
        """Record a step as started, done or failed (one row per step and attempt)."""
        with self.connect() as conn, conn.transaction():
            row = conn.execute(
                "SELECT seq, extract(epoch FROM now() - started_at)::float8 AS took FROM reshard.cutover_steps "
                "WHERE migration = %s AND attempt = %s AND step = %s",
                (migration, attempt, step),
            ).fetchone()
            payload = Jsonb(json.loads(json.dumps(detail, default=str)))
            if status != "started":
                self.audit(conn, migration, f"step.{status}", **{
                    **detail, "attempt": attempt, "step": step, "seconds": round(row["took"], 4) if row else 0.0})
            if row is None:
                seq = conn.execute(
                    "SELECT coalesce(max(seq), 0) + 1 AS n FROM reshard.cutover_steps "
                    "WHERE migration = %s AND attempt = %s", (migration, attempt),
                ).fetchone()["n"]
                conn.execute(
                    "INSERT INTO reshard.cutover_steps (migration, attempt, seq, step, status, detail, finished_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s = 'started' THEN NULL ELSE now() END)",
                    (migration, attempt, seq, step, status, payload, status),
                )
            else:
                conn.execute(
                    "UPDATE reshard.cutover_steps SET status = %s, detail = detail || %s, "
                    "finished_at = CASE WHEN %s = 'started' THEN NULL ELSE now() END "
                    "WHERE migration = %s AND attempt = %s AND seq = %s",
                    (status, payload, status, migration, attempt, row["seq"]),
                )
        took = f" after {row['took']:.3f}s" if row and status != "started" else ""
        log.log(logging.WARNING if status == "failed" else logging.INFO, "step %s %s%s", step, status, took,
                extra={"migration": migration, "attempt": attempt, "step": step,
                       "fields": {"status": status, **({"seconds": round(row["took"], 4)} if took else {}),
                                  **json.loads(json.dumps(detail, default=str))}})

    def steps(self, migration: str, attempt: int) -> dict[str, dict]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT step, status, detail, started_at, finished_at FROM reshard.cutover_steps "
                "WHERE migration = %s AND attempt = %s ORDER BY seq", (migration, attempt),
            ).fetchall()
        return {r["step"]: r for r in rows}

    def ms_since(self, at: datetime) -> float:
        """Milliseconds from ``at`` (a time this database recorded) to now, on its clock."""
        with self.connect() as conn:
            return round(float(conn.execute("SELECT extract(epoch FROM now() - %s::timestamptz) * 1000 AS ms",
                                            (at,)).fetchone()["ms"]), 1)

    def finish_attempt(self, migration: str, attempt: int, state: str, result: dict) -> None:
        with self.connect() as conn, conn.transaction():
            conn.execute(
                "UPDATE reshard.cutover_attempts SET state = %s, result = %s, finished_at = now() "
                "WHERE migration = %s AND attempt = %s",
                (state, Jsonb(json.loads(json.dumps(result, default=str))), migration, attempt),
            )
            self.audit(conn, migration, "attempt.finished", attempt=attempt, state=state, **result)

    def attempts(self, migration: str) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT attempt, kind, wave, state, result, started_at, finished_at FROM reshard.cutover_attempts "
                "WHERE migration = %s ORDER BY attempt", (migration,)
            ).fetchall()

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

    # ---- the lease ----------------------------------------------------------------
    @contextmanager
    def lease(self, migration: str, purpose: str) -> Iterator[Lease]:
        """Hold the migration's lease while the block runs: one command at a time acts on a
        migration (start, cutover, rollback, complete, abort), whatever host it runs on.

        The lease is a session advisory lock in the control database, so it dies with its
        holder's connection: a SIGKILLed holder never blocks a rerun, and a holder whose
        connection is gone has lost it (``Lease.check`` says so before every step that
        acts). Taken on a pinned store it lives on the pinned connection, which makes the
        cutover's activation, committed on that same session, provably the holder's.
        The holder is recorded in ``reshard.leases`` so a refusal can name it.
        """
        own = self._pinned is None
        conn = self.connect(autocommit=True) if self._pinned is None else self._pinned
        lease = Lease(conn, migration, purpose)
        try:
            lease.acquire()
            yield lease
        finally:
            if own:
                conn.close()  # ends the session: the lock goes with it
            else:
                lease.release()


class Lease:
    """The advisory lock behind ``ControlStore.lease``; see there."""

    NAMESPACE = 7  # first key of reshard's advisory locks on the control database

    def __init__(self, conn: psycopg.Connection[Any], migration: str, purpose: str):
        self.conn = conn
        self.migration = migration
        self.purpose = purpose
        self.key = zlib.crc32(migration.encode()) - (1 << 31)  # into int4 range

    def _q(self, sql: str, params: tuple = ()) -> dict | None:
        """One statement on the lease's session, committed at once (the session may be a
        pinned, non-autocommit connection)."""
        cur = self.conn.execute(sql, params)
        row = cur.fetchone() if cur.description else None
        if not self.conn.autocommit:
            self.conn.commit()
        return row

    def acquire(self) -> None:
        got = self._q("SELECT pg_try_advisory_lock(%s::int, %s::int) AS ok", (self.NAMESPACE, self.key))["ok"]
        if not got:
            holder = self._q(
                "SELECT holder, purpose, since FROM reshard.leases l WHERE migration = %s AND EXISTS ("
                "SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid)", (self.migration,))
            who = (f"{holder['purpose']} by {holder['holder']} since {holder['since']:%Y-%m-%d %H:%M:%S %Z}"
                   if holder else "another reshard process")
            raise Busy(f"migration {self.migration} is busy: {who} holds its lease; {self.purpose} was not started. "
                       "Wait for it to finish (reshard status shows it); a holder that died releases it at once")
        self._q(
            "INSERT INTO reshard.leases (migration, holder, purpose, backend_pid) VALUES (%s, %s, %s, "
            "pg_backend_pid()) ON CONFLICT (migration) DO UPDATE SET holder = EXCLUDED.holder, "
            "purpose = EXCLUDED.purpose, backend_pid = EXCLUDED.backend_pid, since = now()",
            (self.migration, ACTOR, self.purpose))

    def check(self) -> None:
        """Raise LeaseLost unless this session still holds the lease."""
        try:
            held = self._q(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                "AND classid = %s AND objid = %s::int::oid AND objsubid = 2 AND granted) AS held",
                (self.NAMESPACE, self.key))["held"]
        except psycopg.Error as exc:
            raise LeaseLost(f"lost the lease of migration {self.migration}: control database session ended "
                            f"({type(exc).__name__})") from None
        if not held:
            raise LeaseLost(f"lost the lease of migration {self.migration}")

    def release(self) -> None:
        try:
            if not self.conn.closed:
                if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self.conn.rollback()
                self._q("DELETE FROM reshard.leases WHERE migration = %s AND backend_pid = pg_backend_pid()",
                        (self.migration,))
                self._q("SELECT pg_advisory_unlock(%s::int, %s::int)", (self.NAMESPACE, self.key))
        except psycopg.Error:
            pass  # the session is gone, and the lock with it
