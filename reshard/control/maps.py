"""Shard map versions (epochs) and which one routes."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from reshard.control.base import Records
from reshard.errors import ConfigError
from reshard.maps.shardmap import ShardMap, parse_map

MAP_CHANNEL = "reshard_map"  # NOTIFY channel: payload is the newly active epoch


class MapRecords(Records):
    """Every registered map version, and the active one."""

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
            self._audit(conn, None, "map.registered", epoch=epoch, digest=digest, note=note)
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

    def activate(self, epoch: int) -> None:
        """Make ``epoch`` the routing map (inside a unit of work, with what goes with it).
        Routers listening on ``reshard_map`` hear the new epoch when it commits."""
        with self.connect() as conn:
            self._activate(conn, epoch)

    def _activate(self, conn: psycopg.Connection[Any], epoch: int) -> None:
        conn.execute(
            "INSERT INTO reshard.active_map (singleton, epoch) VALUES (true, %s) "
            "ON CONFLICT (singleton) DO UPDATE SET epoch = EXCLUDED.epoch, switched_at = now()",
            (epoch,),
        )
        conn.execute("SELECT pg_notify(%s, %s)", (MAP_CHANNEL, str(epoch)))
        self._audit(conn, None, "map.activated", epoch=epoch)

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

    def _map_in(self, conn: psycopg.Connection[Any], epoch: int) -> ShardMap:
        row = conn.execute("SELECT body FROM reshard.shard_maps WHERE epoch = %s", (epoch,)).fetchone()
        if row is None:
            raise ConfigError(f"no shard map with epoch {epoch}")
        return parse_map(row["body"], where=f"map epoch {epoch}")
