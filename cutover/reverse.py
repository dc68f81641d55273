"""Reverse replication: each target's changes flow back to the sources after cutover.

The stream is prepared before the target accepts its first write: publication, slot
(its position is the reverse start, recorded), the heartbeat row for drain proofs,
the Debezium connector and its topics. The running appliers notice the new stream in
the control database and apply it to the sources, skipping the forward applier's own
writes by their replication origin.

Until a wave is cut over, a target takes no application writes, so everything its
reverse stream would carry is an echo of the forward applier. PostgreSQL 15's pgoutput
cannot filter by origin, so instead a cutover attempt that backs out stops its reverse
connectors (``quiet``), and the next attempt moves their slots past the echoes before
resuming them: no change travels through Kafka twice while the migration streams.
"""

from __future__ import annotations

from reshard.cdc_applier.connector import ensure_connector
from reshard.cluster import failover, shard_schema
from reshard.cluster.replication import advance_slot, create_slot, ensure_publication, slot_active
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.store import ControlStore
from reshard.ddl import capture
from reshard.errors import WaitTimeout
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import Stream, reverse
from reshard.retry import poll


def _wait_streaming(config: Config, cluster: str, slot: str, timeout: float) -> None:
    """Connect calls a task RUNNING before Debezium opened its replication stream; the
    slot turns active when it has. Until then the task's start-up still competes with the
    forward stream for the worker, which the drain inside the write pause waits on."""
    with connect(config.cluster(cluster).dsn, f"target cluster {cluster}", autocommit=True) as conn:
        try:
            poll(lambda: slot_active(conn, slot) is True, timeout=timeout, interval=0.1,
                 what=f"the reverse stream's slot {slot} on {cluster} streaming")
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}; is its connector running? (reshard status)") from None


def prepare(config: Config, store: ControlStore, migration: str, target: str, tables: list[str]) -> dict:
    """Create (or find) the reverse stream of ``target``. Idempotent: a stream an aborted
    attempt prepared is reused; one dropped by a rollback is recreated as a new generation."""
    existing = {r["cluster"]: r for r in store.reverse_streams(migration)}
    generation = existing[target]["generation"] if target in existing else store.next_generation(migration)
    stream = reverse(migration, target, generation)
    client = ConnectClient(config.connect)
    out: dict = {"cluster": target, "slot": stream.slot, "connector": stream.connector}
    with connect(config.cluster(target).dsn, f"target cluster {target}", autocommit=True) as conn:
        shard_schema.install(conn)
        conn.execute("INSERT INTO reshard.heartbeat (migration) VALUES (%s) ON CONFLICT (migration) DO NOTHING",
                     (migration,))
        ensure_publication(conn, stream.publication, tables)
        why = capture.install(conn, migration, tables)  # the new owner's schema changes flow back too
        start = create_slot(conn, stream.slot)
        if stream.slot not in store.slot_origins(migration):
            made_on = failover.origin(conn)
            store.record_slot_origin(migration, target, stream.slot, made_on.system_id, made_on.timeline)
        if target in existing and client.stopped(stream.connector):
            # quieted by an attempt that backed out: the WAL since holds only echoes
            out["resumed_at"], out["echo_bytes_skipped"] = advance_slot(conn, stream.slot)
            client.resume(stream.connector)
    if target in existing:
        start = existing[target]["start_lsn"]
    topics = ensure_connector(config, stream, tables)
    _wait_streaming(config, target, stream.slot, timeout=60.0)
    store.record_reverse(migration, target, stream.slot, stream.publication, start, stream.connector, topics,
                         generation)
    if why:
        out["ddl_capture"] = why
    return {**out, "start_lsn": start}


def quiet(config: Config, store: ControlStore, migration: str) -> list[str]:
    """Stop the reverse connectors while no wave is cut over (their targets take no
    application writes, so all they would carry is echoes). Returns the ones stopped."""
    if any(w["state"] == "cut" for w in store.waves(migration)):
        return []
    client = ConnectClient(config.connect, timeout=5.0)  # after the pause: a frozen Connect only delays the exit
    stopped = []
    for s in streams(store, migration):
        if client.status(s.connector) is not None and not client.stopped(s.connector):
            # without stored offsets, Debezium resumes from the slot's position (see prepare)
            client.stop(s.connector, forget_offsets=True)
            stopped.append(s.connector)
    return stopped


def streams(store: ControlStore, migration: str) -> list[Stream]:
    return [reverse(migration, r["cluster"], r["generation"]) for r in store.reverse_streams(migration)]
