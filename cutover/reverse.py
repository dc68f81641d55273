"""Reverse replication: each target's changes flow back to the sources after cutover.

The stream is prepared before the target accepts its first write: publication, slot
(its position is the reverse start, recorded), the heartbeat row for drain proofs,
the Debezium connector and its topics. The running appliers notice the new stream in
the control database and apply it to the sources, skipping the forward applier's own
writes by their replication origin.
"""

from __future__ import annotations

from reshard import shard_schema
from reshard.config import Config
from reshard.control.store import ControlStore, connect
from reshard.replication import create_slot, ensure_publication
from reshard.streams import Stream, reverse
from cdc_applier.connector import ensure_connector


def prepare(config: Config, store: ControlStore, migration: str, target: str, tables: list[str]) -> dict:
    """Create (or find) the reverse stream of ``target``. Idempotent: a stream an aborted
    attempt prepared is reused; one dropped by a rollback is recreated as a new generation."""
    existing = {r["cluster"]: r for r in store.reverse_streams(migration)}
    generation = existing[target]["generation"] if target in existing else store.next_generation(migration)
    stream = reverse(migration, target, generation)
    with connect(config.cluster(target).dsn, f"target cluster {target}", autocommit=True) as conn:
        shard_schema.install(conn)
        conn.execute("INSERT INTO reshard.heartbeat (migration) VALUES (%s) ON CONFLICT (migration) DO NOTHING",
                     (migration,))
        ensure_publication(conn, stream.publication, tables)
        start = create_slot(conn, stream.slot)
    if target in existing:
        start = existing[target]["start_lsn"]
    topics = ensure_connector(config, stream, tables)
    store.record_reverse(migration, target, stream.slot, stream.publication, start, stream.connector, topics,
                         generation)
    return {"cluster": target, "slot": stream.slot, "start_lsn": start, "connector": stream.connector}


def streams(store: ControlStore, migration: str) -> list[Stream]:
    return [reverse(migration, r["cluster"], r["generation"]) for r in store.reverse_streams(migration)]
