"""Follows each stream's cluster through a failover, beside the applier.

Every ``every_s`` it assesses each live stream (reshard/proof/lineage.py: where the
cluster's primary is now, and whether the slot there is still the stream's own), then:

- on the same primary or one a failover carried the slot to (17+ failover slots), it makes
  sure the connector captures from that primary, re-registering it if not; Debezium resumes
  from its offset, and the applier's per-key positions make any replay a no-op;
- a lost slot (15/16, or a standby that had not synchronized it) was recorded by the
  assessment: the stream is marked lost, the migration's error set, the connector paused.

Every ``SYNC_EVERY_S`` it also asks the standbys a cluster's DSN lists (17+) whether they hold
the stream's failover slot yet: a new slot is synchronized only once its consumer moved it
past the standby's horizon, which a standby snapshot record on the primary
(``pg_log_standby_snapshot``, superuser or granted) brings about at once rather than at the
next checkpoint.

A primary that cannot be reached (mid-failover) is asked again next round. It runs on its
own thread: a slow cluster never holds the applier's poll loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import psycopg

from reshard.cdc_applier.connector import ensure_connector
from reshard.cluster import failover, features
from reshard.cluster.failover import Lineage
from reshard.config import Config
from reshard.control.store import ControlStore
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import Stream
from reshard.proof.lineage import Assessment, assess

log = logging.getLogger("reshard.cdc_applier.failover_watch")
WATCH_EVERY_S = 2.0
SYNC_EVERY_S = 10.0


class FailoverWatch:
    def __init__(self, config: Config, store: ControlStore, migration: str, tables: list[str],
                 streams: list[Stream], every_s: float = WATCH_EVERY_S):
        self.config = config
        self.store = store
        self.migration = migration
        self.tables = tables
        self.streams = list(streams)
        self.every_s = every_s
        self.conns: dict[str, psycopg.Connection[Any]] = {}
        self._synced_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reshard-failover-watch", daemon=True)

    def start(self) -> FailoverWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for conn in self.conns.values():
            with contextlib.suppress(Exception):
                conn.close()

    def follow(self, streams: list[Stream]) -> None:
        """The streams the applier consumes now (reverse ones come with a cutover)."""
        self.streams = list(streams)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every_s):
                try:
                    self.check()
                except Exception as exc:  # never takes the applier down; said and retried next round
                    log.warning("failover watch: %s", exc)
        finally:
            self.store.close()  # this thread's control session, when the store keeps one per thread

    def check(self) -> list[Assessment]:
        """One round over every stream."""
        found = assess(self.config, self.store, self.migration, self.streams, self.conns)
        for a in found:
            if a.lineage is None:
                log.info("failover watch: %s not reachable now (%s); asking again in %.0fs", a.stream.cluster, a.why,
                         self.every_s)
            elif a.lineage != Lineage.LOST and a.primary is not None:
                self._point(a.stream, failover.connect_address(self.config.cluster(a.stream.cluster), a.primary))
        if time.monotonic() - self._synced_at >= SYNC_EVERY_S:
            self._synced_at = time.monotonic()
            self._help_sync(found)
        return found

    def _help_sync(self, found: list[Assessment]) -> None:
        """Log a standby snapshot on a primary whose ready standbys lack one of its streams' slots."""
        by_cluster: dict[str, list[Assessment]] = {}
        for a in found:
            if a.lineage in (Lineage.SAME, Lineage.CARRIED) and a.primary is not None \
                    and a.primary.major >= features.FAILOVER_SLOTS and len(self.config.cluster(a.stream.cluster).hosts()) > 1:
                by_cluster.setdefault(a.stream.cluster, []).append(a)
        for cluster, assessed in by_cluster.items():
            conn = self.conns.get(cluster)
            primary = assessed[0].primary
            if conn is None or conn.closed or primary is None:
                continue
            c = self.config.cluster(cluster)
            behind = [sb for sb in failover.standbys(c, primary, conn, [a.stream.slot for a in assessed])
                      if not sb.missing and not all(sb.synced.values())]
            if behind:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_log_standby_snapshot()")

    def _point(self, stream: Stream, at: tuple[str, str]) -> None:
        """Re-register the connector if it captures from anywhere but the primary."""
        current = ConnectClient(self.config.connect, timeout=10.0).config(stream.connector)
        if current is None or (current.get("database.hostname"), current.get("database.port")) == at:
            return
        log.warning("stream %s: connector %s captures from %s:%s, the primary is %s:%s; re-pointing it",
                    stream.slot, stream.connector, current.get("database.hostname"), current.get("database.port"), *at)
        ensure_connector(self.config, stream, self.tables, wait=False)  # locates the primary again
        self.store.record_event(self.migration, "stream.repointed", slot=stream.slot, cluster=stream.cluster,
                                connector=stream.connector, host=at[0], port=at[1])
