"""The steps of a switch (a cutover wave, or a rollback), live and as a dry run.

A switch moves the writes of some keys from the clusters that accept them now
(``from_side``) to others (``to_side``): the forward cutover of a wave, or its
rollback. ``CutoverSteps`` names each step once; ``LiveSteps`` does them, and
``DryRunSteps`` reads the same real positions, lag and sequence values and says what
it would do, one sentence per step, writing nothing. The orchestrator
(cutover/orchestrator.py) is written once against the protocol, so a dry run prints
exactly the plan a real run follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import psycopg

from reshard.cdc_applier.connector import drop_streams
from reshard.cluster import fence, shard_schema
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.store import ControlStore
from reshard.cutover import reverse as reverse_streams
from reshard.cutover.sequences import bring_past, last_values, owned_sequences
from reshard.ddl import follower as ddl_follower
from reshard.errors import BudgetExceeded
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import Stream, forward, reverse
from reshard.maps.planner import Plan
from reshard.maps.planner import plan as make_plan
from reshard.maps.shardmap import ShardMap
from reshard.proof.catchup import applier_group, mark_positions, wait_applied, wait_confirmed
from reshard.proof.reconcile import CheckResult, ReconciliationFailed, reconcile

T = TypeVar("T")


def at_once(pool: ThreadPoolExecutor, keys: list[str], fn: Callable[[str], T]) -> dict[str, T]:
    """``fn(key)`` for every key, concurrently on ``pool``; returns when every call has
    ended, raising the first failure in the keys' order (the others' effects stand)."""
    futures = {k: pool.submit(fn, k) for k in keys}
    for exc in [f.exception() for f in futures.values()]:  # waits for every one
        if exc is not None:
            raise exc
    return {k: f.result() for k, f in futures.items()}


class SwitchKind(StrEnum):
    """What a switch does: a cutover moves the keys to their new owners, a rollback back."""

    CUTOVER = "cutover"
    ROLLBACK = "rollback"
STATEMENT_TIMEOUT_MS = 30_000  # every statement of a switch is short; reconcile sets its own from the budget
FORWARD_HOLD_MS = 500  # past the budget, a target's flip still holds each table lock at most this long
# inside the write pause the drain looks at the slots and the appliers' offsets this often (a
# query per source, a Kafka request): every look saved comes off the pause
DRAIN_POLL_S = 0.005


@dataclass
class Switch:
    """What moves: from the active map (epoch ``active_epoch``) to ``dest_map``."""

    kind: SwitchKind
    migration: str
    active_epoch: int
    active_map: ShardMap
    dest_map: ShardMap
    wave: int | None = None
    wave_buckets: dict[str, list[int]] | None = None  # group -> buckets of this wave; None: every move
    last_wave: bool = True
    generations: dict = field(default_factory=dict)  # rollback: target -> its reverse stream's generation
    plan: Plan = field(init=False)

    def __post_init__(self) -> None:
        self.plan = make_plan(self.active_map, self.dest_map)

    @property
    def from_side(self) -> list[str]:
        return self.plan.sources()

    @property
    def to_side(self) -> list[str]:
        return self.plan.targets()

    @property
    def clusters(self) -> list[str]:
        return sorted(set(self.from_side) | set(self.to_side))

    @property
    def tables(self) -> list[str]:
        return self.plan.tables()

    @property
    def drain_streams(self) -> list[Stream]:
        """The streams that carry the from-side's last writes to the to-side."""
        if self.kind == SwitchKind.CUTOVER:
            return [forward(self.migration, c) for c in self.from_side]
        return [reverse(self.migration, c, self.generations.get(c, 0)) for c in self.from_side]

    def drain_topics(self) -> list[str]:
        return [s.topic(t) for s in self.drain_streams for t in self.tables]


class CutoverSteps(Protocol):
    """One method per step. Each returns plain data about what it did (or would do).
    ``unfenced_at``: when ``back_out`` let the from-side's writes flow again (monotonic
    time; None before a back-out)."""

    unfenced_at: float | None

    def prepare(self) -> dict: ...
    def register_map(self) -> int: ...
    def fence_from(self, budget_s: float) -> dict[str, str]: ...
    def drain_position(self) -> dict[Stream, str]: ...
    def drain(self, positions: dict[Stream, str], deadline: float) -> dict: ...
    def sync_sequences(self) -> dict: ...
    def reconcile(self, rules: list[dict], deadline: float) -> list[CheckResult]: ...
    def flip_from(self, epoch: int, deadlines: dict[str, str]) -> dict: ...
    def flip_to(self, epoch: int) -> dict: ...
    def activate(self, epoch: int, pause_ms: float | None, drain_ms: float) -> dict: ...
    def after_flip(self) -> dict: ...
    def back_out(self) -> dict: ...
    def quiet_reverse(self) -> dict: ...


class LiveSteps:
    """Does the steps. Connections to every involved cluster are opened (and reshard's
    schema checked) in ``prepare``, before the pause, and kept for the whole switch."""

    def __init__(self, config: Config, store: ControlStore, sw: Switch, *, lock_timeout_ms: int = 500,
                 sequence_gap: int = 1):
        self.config = config
        self.store = store
        self.sw = sw
        self.lock_timeout_ms = lock_timeout_ms
        self.sequence_gap = sequence_gap
        self.conns: dict[str, psycopg.Connection[Any]] = {}
        self.admin: KafkaAdmin | None = None
        self.deadline: float | None = None  # monotonic end of the write-pause budget, set by the fence
        self.unfenced_at: float | None = None  # when back_out restored the from-side (its writes flow again)
        self._pool: ThreadPoolExecutor | None = None  # for _each, made on first use

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.conns = {}
        if self.admin is not None:
            self.admin.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _each(self, clusters: list[str], fn: Callable[[str], T]) -> dict[str, T]:
        """``fn`` on every cluster at once, each on its own session: inside the write pause a
        step costs its slowest cluster, not their sum (with three sources the fence and the
        flips took a round of lock waits per source, one after the other). Every call ends
        before this returns; the first failure, in the clusters' order, is raised."""
        if len(clusters) <= 1:
            return {c: fn(c) for c in clusters}
        for c in clusters:  # sessions are opened here, one at a time; each thread then uses its own
            self._conn(c)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reshard-switch")
        return at_once(self._pool, clusters, fn)

    def _conn(self, cluster: str) -> psycopg.Connection[Any]:
        conn = self.conns.get(cluster)
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.config.cluster(cluster).dsn, f"cluster {cluster}", autocommit=True)
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(STATEMENT_TIMEOUT_MS),))
            shard_schema.install(conn)
            shard_schema.writer_session(conn)
            self.conns[cluster] = conn
        return conn

    def _hold_ms(self, floor_ms: int = fence.MIN_HOLD_MS) -> int:
        """How long a fence transaction may hold its table lock now: what is left of the
        budget (at least ``floor_ms``), enforced by the server (see reshard/cluster/fence.py)."""
        if self.deadline is None:
            return fence.HOLD_MS
        return max(floor_ms, int((self.deadline - time.monotonic()) * 1000))

    def prepare(self) -> dict:
        sw = self.sw
        out: dict = {"fences": {}}
        for c in sw.clusters:  # every involved cluster enforces the active map before anything moves
            out["fences"][c] = fence.install(self._conn(c), fence.steady(c, sw.active_epoch, sw.active_map),
                                             self.lock_timeout_ms * 4)
        if sw.kind == SwitchKind.CUTOVER:
            out["reverse"] = [reverse_streams.prepare(self.config, self.store, sw.migration, t, sw.tables)
                              for t in sw.to_side]
        # what the drain uses is opened now, outside the write pause: the from-side sessions
        # above, and a Kafka client that has fetched metadata once
        self.admin = KafkaAdmin(self.config.kafka)
        self.admin.end_offsets(sw.drain_topics()[:1])
        # the drain waits on Debezium inside the pause: see that it confirms promptly now,
        # with the new reverse tasks started (their start-up competes for the worker)
        t = time.monotonic()
        wait_confirmed(self.config, mark_positions(self.config, sw.migration, sw.drain_streams, self.conns),
                       t + 60.0, self.conns)
        out["confirm_probe_ms"] = round((time.monotonic() - t) * 1000, 1)
        return out

    def register_map(self) -> int:
        note = (f"wave {self.sw.wave} of migration {self.sw.migration}" if self.sw.kind == SwitchKind.CUTOVER
                else f"rollback of migration {self.sw.migration}")
        epoch, _created = self.store.register_map(self.sw.dest_map, note)
        return epoch

    def fence_from(self, budget_s: float) -> dict[str, str]:
        sw = self.sw
        self.deadline = time.monotonic() + budget_s

        def fence_one(c: str) -> str:
            conn = self._conn(c)
            d = fence.server_deadline(conn, budget_s)
            fence.install(conn, fence.moving(c, sw.active_epoch, sw.active_map, sw.plan, list(sw.plan.moves),
                                             note=f"{sw.kind} of {sw.migration}", deadline=d), self.lock_timeout_ms,
                          hold_ms=self._hold_ms(), point="fence")
            return d
        return self._each(sw.from_side, fence_one)

    def drain_position(self) -> dict[Stream, str]:
        return mark_positions(self.config, self.sw.migration, self.sw.drain_streams, self.conns)

    def drain(self, positions: dict[Stream, str], deadline: float) -> dict:
        started = time.monotonic()
        wait_confirmed(self.config, positions, deadline, self.conns, interval=DRAIN_POLL_S)
        confirmed = time.monotonic()
        assert self.admin is not None
        ends = wait_applied(self.admin, applier_group(self.sw.migration), self.sw.drain_topics(), deadline,
                            interval=DRAIN_POLL_S)
        return {"confirm_ms": round((confirmed - started) * 1000, 1),
                "apply_ms": round((time.monotonic() - confirmed) * 1000, 1),
                "records_through": sum(ends.values())}

    def sync_sequences(self) -> dict:
        out = {}
        for m in self.sw.plan.moves:
            tables = sorted(self.sw.plan.new.groups[m.group].tables)
            out[m.id] = bring_past(self._conn(m.source), self._conn(m.target), tables, self.sequence_gap)
        return out

    def reconcile(self, rules: list[dict], deadline: float) -> list[CheckResult]:
        """The user's checks at the consistent point (fenced and drained); see reshard/proof/reconcile.py.
        Raises ReconciliationFailed on a disagreement, BudgetExceeded when out of time."""
        try:
            results = reconcile(self.sw.plan, rules, self._conn, deadline)
        except psycopg.errors.QueryCanceled:
            raise BudgetExceeded("the write-pause budget ran out during the reconciliation checks") from None
        if not all(r.ok for r in results):
            raise ReconciliationFailed(results)
        return results

    def flip_from(self, epoch: int, deadlines: dict[str, str]) -> dict:
        sw = self.sw
        self._each(sw.from_side, lambda c: fence.install(
            self._conn(c), fence.steady(c, epoch, sw.dest_map), self.lock_timeout_ms, only_before=deadlines[c],
            hold_ms=self._hold_ms(), point="flip_from"))
        return {"clusters": sw.from_side, "epoch": epoch}

    def flip_to(self, epoch: int) -> dict:
        """Past the point of no return (see the orchestrator): runs even after the budget,
        so its locks are held at most FORWARD_HOLD_MS if this process freezes inside."""
        sw = self.sw
        self._each(sw.to_side, lambda c: fence.install(
            self._conn(c), fence.steady(c, epoch, sw.dest_map), self.lock_timeout_ms,
            hold_ms=self._hold_ms(FORWARD_HOLD_MS), point="flip_to"))
        return {"clusters": sw.to_side, "epoch": epoch}

    def activate(self, epoch: int, pause_ms: float | None, drain_ms: float) -> dict:
        """The point of no return: routing moves to ``epoch``. One control transaction
        records it together with the wave, so a rerun after a crash knows for sure."""
        sw = self.sw
        with self.store.unit() as uow:
            uow.activate(epoch)
            if sw.kind == SwitchKind.CUTOVER:
                uow.record_wave(sw.migration, sw.wave or 1, sw.wave_buckets, epoch, "cut", pause_ms, drain_ms)
            else:
                uow.roll_back_waves(sw.migration)
        return {"epoch": epoch}

    def after_flip(self) -> dict:
        sw = self.sw
        if sw.kind == SwitchKind.CUTOVER:
            client = ConnectClient(self.config.connect)
            for s in reverse_streams.streams(self.store, sw.migration):
                client.wait_running(s.connector, timeout=60)
            return {"reverse": [s.connector for s in reverse_streams.streams(self.store, sw.migration)]}
        # rollback: the reverse streams are no longer needed; forward resumes for a later attempt.
        # First the schema changes the new owners made reach the sources (nothing else carries them)
        going = reverse_streams.streams(self.store, sw.migration)
        unplaced = [f"{c['cluster']}#{c['entry_id']} {c['tbl']}: {c['statement'].strip()[:80]} ({c['status']})"
                    for c in ddl_follower.settle(self.config, self.store, sw.migration, going)]
        dropped = drop_streams(self.config, self.store, sw.migration, going, sw.tables)
        return {"dropped": dropped, **({"ddl_unplaced": unplaced} if unplaced else {})}

    def back_out(self) -> dict:
        """Before the point of no return: every involved cluster enforces the active map
        again (the from-side accepts its keys, the to-side does not). The from-side first:
        its writes are the ones paused; ``unfenced_at`` records when they flow again."""
        sw = self.sw
        done = {}

        def restore(c: str) -> None:
            spec = fence.steady(c, sw.active_epoch, sw.active_map)
            try:
                done[c] = fence.install(self._conn(c), spec, max(self.lock_timeout_ms, 2000), point="back_out")
            except (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout):
                # the session was ended (by the server's hold limit while this process was
                # frozen, or a restart): once more on a new one
                self.conns.pop(c).close()
                done[c] = fence.install(self._conn(c), spec, max(self.lock_timeout_ms, 2000))

        for c in sw.from_side:
            restore(c)
        self.unfenced_at = time.monotonic()
        for c in sw.to_side:
            if c not in done:
                restore(c)
        return {"restored_epoch": sw.active_epoch, "clusters": list(done)}

    def quiet_reverse(self) -> dict:
        """After a cutover backed out (and the fences are restored): stop the reverse streams
        until the next attempt, which skips their echoes (see cutover.reverse)."""
        if self.sw.kind != SwitchKind.CUTOVER:
            return {}
        return {"stopped": reverse_streams.quiet(self.config, self.store, self.sw.migration)}


class DryRunSteps:
    """Reads what a real run would read; writes nothing; says what it would do."""

    def __init__(self, config: Config, store: ControlStore, sw: Switch):
        self.config = config
        self.store = store
        self.sw = sw
        self.sentences: list[str] = []
        self.unfenced_at: float | None = None

    def _say(self, text: str) -> None:
        self.sentences.append(text)

    def close(self) -> None:
        pass

    def prepare(self) -> dict:
        sw = self.sw
        self._say(f"ensure the fence of the active map (epoch {sw.active_epoch}) on {', '.join(sw.clusters)}")
        if sw.kind == SwitchKind.CUTOVER:
            existing = {r["cluster"]: r["generation"] for r in self.store.reverse_streams(sw.migration)}
            generation = self.store.next_generation(sw.migration)
            for t in sw.to_side:
                if t in existing:
                    self._say(f"reuse the reverse stream of {t} (slot {reverse(sw.migration, t, existing[t]).slot})")
                else:
                    s = reverse(sw.migration, t, generation)
                    with connect(self.config.cluster(t).dsn, f"cluster {t}") as conn:
                        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
                    self._say(f"create the reverse stream of {t}: publication and slot {s.slot} (from about {lsn}), "
                              f"connector {s.connector}, before {t} accepts any write")
        return {}

    def register_map(self) -> int:
        found = self.store.find_epoch(self.sw.dest_map)
        latest = max((r["epoch"] for r in self.store.map_history()), default=0)
        epoch = found if found == latest and found is not None else latest + 1
        self._say(f"register the {'wave' if self.sw.kind == SwitchKind.CUTOVER else 'rollback'} map as epoch {epoch} "
                  f"(digest {self.sw.dest_map.digest()})")
        return epoch

    def fence_from(self, budget_s: float) -> dict[str, str]:
        for m in self.sw.plan.moves:
            self._say(f"fence on {m.source} the keys moving to {m.target} ({m.summary}) with a deadline "
                      f"{budget_s:.2f}s after the lock is granted; writes in progress are waited out")
        return {c: "deadline" for c in self.sw.from_side}

    def drain_position(self) -> dict[Stream, str]:
        positions = {}
        for s in self.sw.drain_streams:
            with connect(self.config.cluster(s.cluster).dsn, f"cluster {s.cluster}") as conn:
                positions[s] = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            self._say(f"take the drain position on {s.cluster} (now {positions[s]}) and write a heartbeat after it")
        return positions

    def drain(self, positions: dict[Stream, str], deadline: float) -> dict:
        with KafkaAdmin(self.config.kafka) as admin:
            behind = admin.lag(applier_group(self.sw.migration), self.sw.drain_topics())
        for s, x in positions.items():
            with connect(self.config.cluster(s.cluster).dsn, f"cluster {s.cluster}") as conn:
                confirmed = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                         "WHERE slot_name = %s", (s.slot,)).fetchone()
            self._say(f"wait until slot {s.slot} confirms {x} (confirmed now: {confirmed[0] if confirmed else 'no slot'})")
        self._say(f"read the end offsets of {len(self.sw.drain_topics())} topic(s) and wait until the applier "
                  f"reaches them ({behind:,} record(s) behind now)")
        return {"records_behind": behind}

    def sync_sequences(self) -> dict:
        for m in self.sw.plan.moves:
            tables = sorted(self.sw.plan.new.groups[m.group].tables)
            with connect(self.config.cluster(m.source).dsn, f"cluster {m.source}") as src:
                seqs = owned_sequences(src, tables)
                values = last_values(src, list(seqs))
            for seq, v in values.items():
                self._say(f"set {seq} on {m.target} to at least {v + 1} (on {m.source}: {v})")
        return {}

    def reconcile(self, rules: list[dict], deadline: float) -> list[CheckResult]:
        conns: dict[str, psycopg.Connection[Any]] = {}
        try:
            results = reconcile(self.sw.plan, rules, lambda c: conns.setdefault(
                c, connect(self.config.cluster(c).dsn, f"cluster {c}", autocommit=True)), deadline)
        finally:
            for conn in conns.values():
                conn.close()
        for r in results:
            self._say(f"reconcile {r.check} on {r.table} ({r.source} -> {r.target}): "
                      + ("agrees now" if r.ok else f"{len(r.differences)} group(s) differ now (the applier may "
                                                    "be behind; at the fence a difference backs the cutover out)"))
        return results

    def flip_from(self, epoch: int, deadlines: dict[str, str]) -> dict:
        self._say(f"if still within the deadline, install the fence of epoch {epoch} on {', '.join(self.sw.from_side)}: "
                  "they stop owning the moving keys")
        return {}

    def flip_to(self, epoch: int) -> dict:
        self._say(f"install the fence of epoch {epoch} on {', '.join(self.sw.to_side)}: they accept the moving keys")
        return {}

    def activate(self, epoch: int, pause_ms: float | None, drain_ms: float) -> dict:
        self._say(f"activate epoch {epoch} in the control database and notify routers (point of no return)")
        return {}

    def after_flip(self) -> dict:
        if self.sw.kind == SwitchKind.CUTOVER:
            self._say("check that the reverse connector(s) run; appliers apply the reverse streams to the sources")
        else:
            self._say("drop the reverse streams; the forward streams keep running for a later attempt")
        return {}

    def back_out(self) -> dict:
        self._say(f"(on failure before the point of no return: restore the fence of epoch {self.sw.active_epoch} "
                  f"on {', '.join(self.sw.clusters)}, then stop the reverse connectors until the next attempt)")
        return {}

    def quiet_reverse(self) -> dict:
        return {}
