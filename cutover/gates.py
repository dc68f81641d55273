"""Cutover gates: conditions checked, read-only, before anything is fenced.

A failed gate fences nothing; the exit code names the first gate that failed
(ExitCode.GATE_*), and every gate's value is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from reshard.cluster.failover import Lineage
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.store import ControlStore
from reshard.exit_codes import ExitCode
from reshard.kafka.streams import Stream
from reshard.proof.lineage import assess

APPLIER_FRESH_S = 10.0


@dataclass
class Gate:
    name: str
    ok: bool
    value: object
    limit: object
    detail: str
    code: ExitCode

    def to_dict(self) -> dict:
        return {"gate": self.name, "ok": self.ok, "value": self.value, "limit": self.limit, "detail": self.detail}


def lag_gate(records: int, max_lag: int, unconfirmed: dict[str, int | None], max_bytes: int) -> Gate:
    missing = sorted(slot for slot, v in unconfirmed.items() if v is None)
    worst = max((v for v in unconfirmed.values() if v is not None), default=0)
    ok = records <= max_lag and worst <= max_bytes and not missing
    detail = (f"{records:,} Kafka records not yet applied (limit {max_lag:,}); "
              f"at most {worst:,} bytes of WAL not yet confirmed by Debezium (limit {max_bytes:,})")
    if missing:  # a dropped slot has no lag: it has lost the stream, which no cutover can drain
        detail += f"; replication slot(s) {', '.join(missing)} missing: the stream is broken, abort and start again"
    return Gate("lag", ok, {"records": records, "wal_bytes": worst}, {"records": max_lag, "wal_bytes": max_bytes},
                detail, ExitCode.GATE_LAG)


def verification_gate(store: ControlStore, migration: str) -> Gate:
    last = store.last_verification(migration)
    if last is None:
        return Gate("verified", False, None, "equal", f"no verification yet: run `reshard verify {migration}`",
                    ExitCode.GATE_UNVERIFIED)
    ok = bool(last["detail"].get("equal"))
    detail = f"last verification at {last['at']:%Y-%m-%d %H:%M:%S} {'passed' if ok else 'found differences'}"
    rolled_back = [a["finished_at"] for a in store.attempts(migration)
                   if a["kind"] == "rollback" and a["state"] == "done" and a["finished_at"]]
    if ok and rolled_back and max(rolled_back) > last["at"]:
        # the targets' writes went back to the sources since: it no longer speaks for the data
        ok = False
        detail += (f", before the rollback of {max(rolled_back):%Y-%m-%d %H:%M:%S}: run `reshard verify "
                   f"{migration}` again")
    return Gate("verified", ok, {"equal": ok, "at": last["at"].isoformat()}, "equal", detail,
                ExitCode.GATE_UNVERIFIED)


def reverse_gate(config: Config, targets: list[str], existing: set[str]) -> Gate:
    """Each target can carry a reverse stream: wal_level=logical and a free slot (or has one)."""
    problems = []
    for t in targets:
        with connect(config.cluster(t).dsn, f"target cluster {t}") as conn:
            level = conn.execute("SHOW wal_level").fetchone()[0]
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::int"
            ).fetchone()
            assert row is not None  # an aggregate: always one row
            used, limit = row
        if level != "logical":
            problems.append(f"{t} has wal_level={level}")
        elif t not in existing and used >= limit:
            problems.append(f"{t} has no free replication slot ({used}/{limit})")
    ok = not problems
    return Gate("reverse", ok, problems or "ready", "wal_level=logical and a free slot per target",
                "; ".join(problems) or f"reverse streams can start on {', '.join(targets)}", ExitCode.GATE_REVERSE)


def applier_gate(store: ControlStore, migration: str) -> Gate:
    fresh = [w for w in store.workers(migration) if w["kind"] == "applier" and w["stopped_at"] is None
             and float(w["idle_s"]) < APPLIER_FRESH_S]
    ok = bool(fresh)
    return Gate("applier", ok, len(fresh), ">= 1 worker reporting in the last 10 s",
                f"{len(fresh)} applier worker(s) running" if ok else
                f"no applier is running: start `reshard apply {migration}` (the drain needs it)", ExitCode.GATE_APPLIER)


def lineage_gate(config: Config, store: ControlStore, migration: str, streams: list[Stream]) -> Gate:
    """Every stream drained is still on its own slot (no failover lost it: proof/lineage.py)."""
    found = assess(config, store, migration, streams)
    lost = {f"{a.stream.direction}:{a.stream.cluster}": a.why for a in found if a.lineage == Lineage.LOST}
    return Gate("streams", not lost, lost or "intact", "every stream on the slot reshard made",
                "; ".join(f"{k} lost its slot: {why}" for k, why in lost.items()) if lost else
                "every stream on its own slot", ExitCode.STREAM_LOST)


def stream_wal_lag(config: Config, streams: list[Stream]) -> dict[str, int | None]:
    out = {}
    for s in streams:
        with connect(config.cluster(s.cluster).dsn, f"cluster {s.cluster}") as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                "FROM pg_replication_slots WHERE slot_name = %s", (s.slot,)).fetchone()
        out[s.slot] = row[0] if row else None
    return out
