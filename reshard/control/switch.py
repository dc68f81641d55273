"""The switch's records: reverse streams, waves, cutover and rollback attempts and their steps."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from reshard.control.base import ACTOR
from reshard.control.records import MigrationRecords
from reshard.control.states import State

log = logging.getLogger("reshard.control")


@dataclass(frozen=True)
class StepRecord:
    """A step of a switch started, done or failed; ``at`` is when (``time.monotonic()``),
    None for now."""

    step: str
    status: str  # started | done | failed
    detail: dict = field(default_factory=dict)
    at: float | None = None


# One record, one statement: the step's row is inserted (next seq) or updated, and a
# step's end goes to the audit log with how long the step took; returns that time.
_RECORD_STEP = """
WITH t AS (SELECT now() - make_interval(secs => %(ago)s) AS at),
prev AS (SELECT seq, started_at FROM reshard.cutover_steps
         WHERE migration = %(m)s AND attempt = %(a)s AND step = %(step)s),
added AS (
    INSERT INTO reshard.cutover_steps (migration, attempt, seq, step, status, detail, started_at, finished_at)
    SELECT %(m)s, %(a)s, coalesce((SELECT max(seq) FROM reshard.cutover_steps
                                   WHERE migration = %(m)s AND attempt = %(a)s), 0) + 1,
           %(step)s, %(status)s, %(detail)s, t.at, CASE WHEN %(status)s = 'started' THEN NULL ELSE t.at END
    FROM t WHERE NOT EXISTS (SELECT 1 FROM prev)),
changed AS (
    UPDATE reshard.cutover_steps s SET status = %(status)s, detail = s.detail || %(detail)s,
           finished_at = CASE WHEN %(status)s = 'started' THEN NULL ELSE (SELECT at FROM t) END
    FROM prev WHERE s.migration = %(m)s AND s.attempt = %(a)s AND s.seq = prev.seq),
audited AS (
    INSERT INTO reshard.audit_log (migration, actor, event, detail, at)
    SELECT %(m)s, %(actor)s, 'step.' || %(status)s, %(detail)s || jsonb_build_object(
               'attempt', %(a)s, 'step', %(step)s,
               'seconds', coalesce(round(extract(epoch FROM t.at - prev.started_at), 4), 0.0)), t.at
    FROM t LEFT JOIN prev ON true WHERE %(status)s <> 'started')
SELECT extract(epoch FROM (SELECT at FROM t) - (SELECT started_at FROM prev))::float8 AS took
"""


class SwitchRecords(MigrationRecords):
    """What a cutover or a rollback did, step by step, so a rerun knows where it stands (on
    top of the migration records: where a migration rests follows from its waves)."""

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

    def record_wave(self, migration: str, wave: int,
                    buckets: dict[str, list[int]] | None,
                    epoch: int, state: str, pause_ms: float | None = None, drain_ms: float | None = None) -> None:
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO reshard.waves (migration, wave, buckets, epoch, state, pause_ms, drain_ms, cut_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (migration, wave) DO UPDATE SET "
                "state = EXCLUDED.state, epoch = EXCLUDED.epoch, "
                "pause_ms = coalesce(EXCLUDED.pause_ms, reshard.waves.pause_ms), "
                "drain_ms = coalesce(EXCLUDED.drain_ms, reshard.waves.drain_ms)",
                (migration, wave, Jsonb(buckets) if buckets is not None else None, epoch, state, pause_ms, drain_ms),
            )

    def settled_state(self, migration: str) -> str:
        """Where the migration rests when nothing runs on it, from its waves and the routing
        map: baking once routing is its target map, rolled_back after a rollback, else
        streaming (also with canary waves cut), or shadowing while shadow reads are on."""
        rec = self.migration(migration)
        streaming = State.SHADOWING if rec.settings.get("shadow") else State.STREAMING
        waves = self.waves(migration)
        if any(w["state"] == "cut" for w in waves):
            active = self.active()
            final = self.get_map(rec.to_epoch)
            return State.BAKING if active is not None and active[1].digest() == final.digest() else streaming
        if any(w["state"] == "rolled_back" for w in waves):
            return State.ROLLED_BACK
        return streaming

    def roll_back_waves(self, migration: str) -> None:
        """Every cut wave is rolled back (in a unit of work: the activation's)."""
        with self.connect() as conn:
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
            self._audit(conn, migration, f"{kind}.started", attempt=n, wave=wave)
            return n

    def running_attempts(self, migration: str) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT attempt, kind, wave, plan, started_at FROM reshard.cutover_attempts "
                "WHERE migration = %s AND state = 'running' ORDER BY attempt", (migration,)
            ).fetchall()

    def step(self, migration: str, attempt: int, step: str, status: str, **detail: Any) -> None:
        """Record a step as started, done or failed (one row per step and attempt)."""
        self.record_steps(migration, attempt, [StepRecord(step, status, detail)])

    def record_steps(self, migration: str, attempt: int, records: list[StepRecord]) -> None:
        """Record steps in one transaction, in one round trip: a cutover keeps the records
        of its write pause back and writes them all at once (see cutover/orchestrator.py).
        Each record's time is when it happened, placed on this database's clock."""
        if not records:
            return
        now = time.monotonic()
        params = [{"m": migration, "a": attempt, "step": r.step, "status": r.status, "actor": ACTOR,
                   "detail": Jsonb(json.loads(json.dumps(r.detail, default=str))),
                   "ago": max(0.0, now - r.at) if r.at is not None else 0.0} for r in records]
        took: list[float | None] = []
        with self.connect() as conn, conn.cursor() as cur:
            cur.executemany(_RECORD_STEP, params, returning=True)
            while True:
                took.append(cur.fetchone()["took"])
                if not cur.nextset():
                    break
        for r, seconds in zip(records, took):
            took_s = round(seconds, 4) if seconds is not None and r.status != "started" else None
            log.log(logging.WARNING if r.status == "failed" else logging.INFO, "step %s %s%s", r.step, r.status,
                    "" if took_s is None else f" after {took_s:.3f}s",
                    extra={"migration": migration, "attempt": attempt, "step": r.step,
                           "fields": {"status": r.status, **({} if took_s is None else {"seconds": took_s}),
                                      **json.loads(json.dumps(r.detail, default=str))}})

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
            self._audit(conn, migration, "attempt.finished", attempt=attempt, state=state, **result)

    def attempts(self, migration: str) -> list[dict]:
        with self.connect() as conn:
            return conn.execute(
                "SELECT attempt, kind, wave, state, result, started_at, finished_at FROM reshard.cutover_attempts "
                "WHERE migration = %s ORDER BY attempt", (migration,)
            ).fetchall()
