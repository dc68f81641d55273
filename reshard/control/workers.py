"""What running processes report: source positions, copy checkpoints, applier heartbeats and samples, routers' counters."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from reshard.control.base import Records


def _names(columns: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)

class WorkerRecords(Records):
    """Facts the copy, the appliers and the routers record as they run."""

    def record_source(self, migration: str, cluster: str, **fields: Any) -> None:
        """Insert or update the migration's row for a source cluster with ``fields``."""
        with self.connect() as conn, conn.transaction():
            sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in fields)
            updated = conn.execute(
                sql.SQL("UPDATE reshard.migration_sources SET {} WHERE migration = %s AND cluster = %s").format(sets),
                [*fields.values(), migration, cluster],
            ).rowcount if fields else 0
            if not updated:
                cols = ["migration", "cluster", *fields]
                conn.execute(
                    sql.SQL("INSERT INTO reshard.migration_sources ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
                        _names(cols), sql.SQL(", ").join([sql.Placeholder()] * len(cols))),
                    [migration, cluster, *fields.values()],
                )

    def record_copy(self, migration: str, move_id: str, tbl: str, **fields: Any) -> None:
        cols = ["migration", "move_id", "tbl", *fields, "updated_at"]
        vals = [migration, move_id, tbl, *fields.values()]
        updates = sql.SQL(", ").join([sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(k)) for k in fields]
                                     + [sql.SQL("updated_at = now()")])
        with self.connect() as conn, conn.transaction():
            conn.execute(
                sql.SQL("INSERT INTO reshard.copy_progress ({}) VALUES ({}, now()) "
                        "ON CONFLICT (migration, move_id, tbl) DO UPDATE SET {}").format(
                    _names(cols), sql.SQL(", ").join([sql.Placeholder()] * len(vals)), updates),
                vals,
            )
            self._audit(conn, migration, "copy.checkpoint", move=move_id, table=tbl, **fields)

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

    def best_apply_rate(self) -> float | None:
        """Events/s one applier worker of this deployment reached when busy (the 90th percentile
        of its sampled rates over spells that applied 1,000 events or more), any migration, in the
        last 30 days; None when none did (`reshard check`'s catch-up estimate)."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY rate) AS rate FROM ("
                " SELECT (applied - lag(applied) OVER w) / nullif(extract(epoch FROM at - lag(at) OVER w), 0) AS rate,"
                " applied - lag(applied) OVER w AS n FROM reshard.apply_samples WHERE at > now() - interval '30 days'"
                " WINDOW w AS (PARTITION BY migration, worker ORDER BY at)) s WHERE n >= 1000").fetchone()
        return float(row["rate"]) if row and row["rate"] else None

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
