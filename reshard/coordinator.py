"""The composition root: a migration's steps, each a short sequence of calls.

``create`` records the maps and the plan. ``start`` checks everything it can before
creating anything, then snapshots (slot, copy) and registers the Debezium
connector; it is resumable and safe to rerun at any point. ``apply`` runs an applier
worker. ``wait`` proves catch-up. ``verify`` compares. ``cutover``, ``rollback`` and
``complete`` hand over to the cutover package. ``teardown`` drops what the migration
created (abort). The CLI is a thin layer over these; so is the demo.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from reshard import preflight
from reshard.cdc_applier.connector import drop_streams, ensure_connector
from reshard.cdc_applier.failover_watch import FailoverWatch
from reshard.cdc_applier.route import Router
from reshard.cdc_applier.worker import Applier, ApplierStats
from reshard.cluster import failover, shard_schema
from reshard.cluster.catalog import table_info
from reshard.cluster.session import connect
from reshard.config import Config, check_name
from reshard.control import states
from reshard.control.records import MigrationRecord
from reshard.control.states import State
from reshard.control.store import ControlStore
from reshard.ddl import capture
from reshard.ddl import report as ddl_report
from reshard.errors import ConfigError, MigrationError, Unavailable
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import Direction, Stream, dlq_topic, forward, streams_of
from reshard.live_control import controls_of
from reshard.maps.planner import Plan, plan
from reshard.maps.shardmap import ShardMap
from reshard.observe.logs import bind
from reshard.observe.progress import Progress, Task
from reshard.proof.catchup import CaughtUp, Lag, confirm_delay, lag, prove_caught_up, slot_lag, topic_lag
from reshard.proof.verify import VerifyReport, verify
from reshard.snapshotter.snapshot import DEFAULT_BATCH_ROWS, SnapshotReport, Snapshotter, check_setup
from reshard.snapshotter.target_tables import create_tables, drop_created, finish_tables
from reshard.snapshotter.throttle import ThrottleSettings

CONFIRM_WARN_MS = 1000.0  # a connector slower than this to confirm a change makes every cutover's pause long

STATUS_TIMEOUT_S = 3.0  # how long `reshard status` waits on Connect before calling it unreachable


@dataclass
class Coordinator:
    config: Config
    store: ControlStore
    progress: Progress
    # a command about one migration puts its name on every log line; a process that reads
    # many (the exporter) must not label them all with the last one it read
    log_context: bool = True

    @classmethod
    def open(cls, config: Config, progress: Progress | None = None) -> Coordinator:
        return cls(config, ControlStore(config.control_dsn), progress or Progress("off"))

    # ---- create ----------------------------------------------------------------
    def create(self, name: str, to_map: ShardMap, from_map: ShardMap | None = None,
               settings: dict | None = None) -> MigrationRecord:
        """Record the migration from the active map (or ``from_map``) to ``to_map``.

        With no active map yet, ``from_map`` is registered and becomes active: that is
        how the first migration of a fleet states where the keys are today.
        """
        check_name("migration", name)
        known = set(self.config.clusters)
        for m in (to_map, from_map):
            if m is not None:
                unknown = m.clusters() - known
                if unknown:
                    raise ConfigError(f"the map names cluster(s) not in reshard.yaml: {', '.join(sorted(unknown))}")
        active = self.store.active_epoch()
        if from_map is not None and active is not None:
            if self.store.get_map(active).digest() != from_map.digest():
                raise ConfigError(
                    f"--from does not match the active map (epoch {active}); omit --from to migrate from it"
                )
            from_epoch = active
        elif from_map is not None:
            from_epoch = self.store.find_epoch(from_map) or self.store.register_map(
                from_map, note=f"current map, for migration {name}")[0]
            self.store.activate(from_epoch)
        elif active is None:
            raise ConfigError("no active shard map yet: pass --from with the map that describes today's placement")
        else:
            from_epoch = active
        old = self.store.get_map(from_epoch)
        p = plan(old, to_map)
        if not p.moves:
            raise ConfigError("the target map moves no keys: nothing to migrate")
        existing = self.store.find_epoch(to_map)
        to_epoch = existing if existing and existing > from_epoch else self.store.register_map(
            to_map, note=f"target of migration {name}")[0]
        return self.store.create_migration(name, from_epoch, to_epoch, p, settings or {})

    def current_map(self, from_map: ShardMap | None = None) -> tuple[int | None, ShardMap]:
        """The map keys are placed by today: ``from_map`` if given, else the active one."""
        if from_map is not None:
            return self.store.find_epoch(from_map), from_map
        return self.store.require_active()

    def register_map(self, m: ShardMap, note: str = "", initial: bool = False) -> tuple[int, bool, bool]:
        """Store a map version: (epoch, created, activated). It routes nothing unless
        ``initial`` and no map is active yet: the first map states today's placement."""
        unknown = m.clusters() - set(self.config.clusters)
        if unknown:
            raise ConfigError(f"the map names cluster(s) not in reshard.yaml: {', '.join(sorted(unknown))}")
        active = self.store.active_epoch()
        if initial and active is not None:
            raise ConfigError(f"a map is already active (epoch {active}); --initial is only for the first one")
        epoch, created = self.store.register_map(m, note)
        if initial:
            self.store.activate(epoch)
        return epoch, created, initial

    def record(self, name: str) -> tuple[MigrationRecord, Plan]:
        if self.log_context:
            bind(migration=name)
        rec = self.store.migration(name)
        return rec, self.store.plan_of(rec)

    # ---- start (snapshot + connector) ----------------------------------------------
    def start(self, name: str, *, batch_rows: int = DEFAULT_BATCH_ROWS, copy_workers: int = 2,
              throttle: ThrottleSettings = ThrottleSettings(), skip_checks: tuple[str, ...] = ()) -> SnapshotReport:
        with self.store.lease(name, "start"):
            rec, p = self.record(name)
            if rec.state == State.ABORTED:
                raise MigrationError(f"migration {name} was aborted; create a new one")
            if rec.state == State.PLANNED:
                self.store.check_no_overlap(name, p)  # before any slot, connector or row
            self.progress.step(f"{name}: checking clusters, Kafka and Connect")
            if rec.state == State.PLANNED:  # a first start: every cluster check (`reshard check`)
                preflight.before_start(self.config, p, skip_checks, self.progress.step)
            else:  # a resumed start: the services it needs now (the clusters answered the first time)
                found = preflight.Preflight()
                preflight.service_checks(self.config, found)
                if found.failed():
                    raise Unavailable("; ".join(c.detail for c in found.failed()))
            setup = check_setup(self.config, p)
            self._say_standbys(name, p.sources())
            for target, tables in setup.missing.items():
                made = create_tables(self.config, name, target, tables)
                self.progress.step(f"{target}: created {', '.join(made.tables)} from the source's definition "
                                   "(indexes and constraints follow the copy)")
            KafkaAdmin(self.config.kafka).ensure_topics(
                [dlq_topic(name)], 1, self.config.kafka.replication_factor)
            self.capture_ddl(name, p.sources(), p.tables())
            if rec.state == State.PLANNED:
                self.store.set_state(name, State.BUILDING, why="start: slots and the snapshot copy")

            # while the copy runs, the streams already started are followed through a failover
            watch = FailoverWatch(self.config, self.store, name, p.tables(), []).start()

            def on_slot(source: str, _lsn: str) -> None:
                stream = forward(name, source)
                topics = ensure_connector(self.config, stream, p.tables())
                self.store.record_source(name, source, connector=stream.connector, topics=topics)
                self.progress.step(f"{source}: Debezium connector {stream.connector} running on slot {stream.slot}")
                watch.follow([*watch.streams, stream])

            try:
                report = Snapshotter(self.config, self.store, rec, p, self.progress, batch_rows=batch_rows,
                                     workers=copy_workers, throttle=throttle).run(setup.units, on_slot)
            finally:
                watch.stop()
            for target in p.targets():  # indexes, constraints and triggers of the tables created above
                done = finish_tables(self.config, name, target)
                report.tables_created += [f"{target}:{t}" for t in done.tables]
                for skipped in done.skipped:
                    self.progress.step(f"not created: {skipped}")
                report.statements_skipped += done.skipped
            report.confirm_ms = self._say_confirm_delay(name, p.sources())
            self.store.set_state(name, State.STREAMING, why="start: copy done, changes stream",
                                 only_from=(State.BUILDING,), **report.to_dict())
            return report

    def _say_confirm_delay(self, name: str, sources: list[str]) -> dict[str, float | None]:
        """How long each source's connector takes to confirm a change, said, and warned about
        past CONFIRM_WARN_MS: the cutover's drain waits that long inside the write pause."""
        found = confirm_delay(self.config, name, [forward(name, s) for s in sources])
        for source, ms in sorted(found.items()):
            if ms is not None and ms <= CONFIRM_WARN_MS:
                self.progress.step(f"{source}: Debezium confirms a change in {ms:.0f} ms (median of 5)")
            else:
                took = f"{ms / 1000:.1f} s" if ms is not None else "over 5 s"
                self.progress.step(
                    f"warning: {source}: Debezium took {took} to confirm a change; every cutover's write pause "
                    "waits at least that long. Set the Connect worker's offset.flush.interval.ms to 1000 or less "
                    "(reshard's embedded worker uses 50)")
        return found

    def capture_ddl(self, name: str, clusters: list[str], tables: list[str]) -> None:
        """Watch the tables' schema on the clusters whose changes stream (before their slots, so
        no change made after the stream's start goes unlogged); what cannot be captured is said,
        and recorded for `reshard status` (a change there then pauses the applier as drift)."""
        rec = self.store.migration(name)
        found = dict(rec.settings.get("ddl_capture") or {})
        for cluster in clusters:
            with connect(self.config.cluster(cluster).dsn, f"cluster {cluster}", autocommit=True) as conn:
                shard_schema.install(conn)
                why = capture.install(conn, name, tables)
            if why:
                self.progress.step(f"{cluster}: schema changes are not captured: {why}")
            if found.get(cluster, "") != why:
                found[cluster] = why
        if found != rec.settings.get("ddl_capture"):
            self.store.update_settings(name, ddl_capture=found)

    def _say_standbys(self, name: str, clusters: list[str]) -> None:
        """Before any slot: which standbys the sources list could not carry the streams through
        a promotion, and what each lacks (a failover to one of them would lose the stream)."""
        for cluster in clusters:
            c = self.config.cluster(cluster)
            if len(c.hosts()) < 2:
                continue
            with connect(c.dsn, f"cluster {cluster}", autocommit=True) as conn:
                primary = failover.locate(c, conn)
                found = failover.standbys(c, primary, conn, [])
            for sb in found:
                if sb.missing:
                    self.progress.step(f"{cluster}: standby {sb.host}:{sb.port} could not carry the stream through a "
                                       f"promotion; it lacks: {'; '.join(sb.missing)}")
                    self.store.record_event(name, "standby.unready", cluster=cluster, host=sb.host, port=sb.port,
                                            missing=sb.missing)
                else:
                    self.progress.step(f"{cluster}: standby {sb.host}:{sb.port} is set up to carry the stream's "
                                       "failover slot")

    # ---- apply / wait -------------------------------------------------------------
    def applier(self, name: str, *, batch_size: int = 2000, **kw: Any) -> Applier:
        rec, p = self.record(name)
        if rec.state not in states.FLOWING:
            raise MigrationError(
                f"migration {name} is {rec.state}; the applier runs while the migration streams (after the copy, "
                f"before and after cutover). Run `reshard start {name}` first."
            )
        self.store.set_error(name, None)
        return Applier(self.config, self.store, rec, p, batch_size=batch_size, **kw)

    def apply(self, name: str, stop: threading.Event, *, until_caught_up: bool = False,
              timeout: float = 600.0, task: Task | None = None, batch_size: int = 2000,
              **applier_kw: Any) -> ApplierStats:
        """Run an applier until ``stop`` is set (or, with until_caught_up, until the
        catch-up proof passes while it runs)."""
        a = self.applier(name, batch_size=batch_size, **applier_kw)
        if not until_caught_up:
            return a.run(stop, task=task)
        result: dict = {}

        def prover() -> None:
            try:
                result["caught_up"] = self.wait(name, timeout)
            except Exception as exc:  # reported by the caller
                result["error"] = exc
            finally:
                stop.set()

        t = threading.Thread(target=prover, name="reshard-catchup", daemon=True)
        t.start()
        stats = a.run(stop, task=task)
        t.join()
        if "error" in result:
            raise result["error"]
        return stats

    def streams(self, name: str) -> tuple[list[Stream], list[str]]:
        """The migration's live streams and their topics."""
        rec, p = self.record(name)
        streams = streams_of(self.store, rec, p)
        return streams, Router(p, streams).topics

    def topics(self, name: str) -> list[str]:
        return self.streams(name)[1]

    def wait(self, name: str, timeout: float = 300.0) -> CaughtUp:
        """Prove every change committed so far, in either direction, is applied."""
        self.record(name)
        return prove_caught_up(self.config, self.store, name, timeout)

    def lag(self, name: str) -> Lag:
        streams, topics = self.streams(name)
        return lag(self.config, name, streams, topics)

    def routers_view(self, tables: list[str], shadow: dict | None) -> dict[str, Any]:
        """The routers reporting in the last minute: their summed counters, and the shadow
        reads' outcomes for ``tables`` (reshard/router.py)."""
        reports = self.store.router_reports(60.0)
        totals: dict[str, int] = {}
        per_table: dict[str, dict[str, int]] = {}
        for r in reports:
            for k, v in r["counters"].items():
                totals[k] = totals.get(k, 0) + int(v)
            for t, counts in r["shadow"].items():
                if t in tables:
                    acc = per_table.setdefault(t, {})
                    for k, v in counts.items():
                        acc[k] = acc.get(k, 0) + int(v)
        return {"reporting": len(reports), "counters": totals, "shadow": {"setting": shadow, "tables": per_table}}

    def shadow(self, name: str, sample: float, tables: dict[str, float]) -> dict[str, Any]:
        """Turn shadow reads on (a fraction of reads, per table if given) or off (all 0):
        routers pick the setting up within seconds (reshard/router.py)."""
        rec, p = self.record(name)
        unknown = sorted(set(tables) - set(p.tables()))
        if unknown:
            raise ConfigError(f"--table names table(s) that migration {name} does not move: {', '.join(unknown)} "
                              f"(it moves {', '.join(p.tables())})")
        bad = [f for f in (sample, *tables.values()) if not 0.0 <= f <= 1.0]
        if bad:
            raise ConfigError(f"a sample is a fraction of reads between 0 and 1, not {bad[0]}")
        on = sample > 0 or any(f > 0 for f in tables.values())
        if on and rec.state not in states.SHADOWABLE:
            raise MigrationError(f"migration {name} is {rec.state}; shadow reads compare the new owners before "
                                 "their cutover (streaming, after the copy)")
        setting = {"sample": sample, "tables": tables} if on else None
        self.store.update_settings(name, shadow=setting)
        self.store.set_state(name, self.store.settled_state(name), only_from=(State.STREAMING, State.SHADOWING),
                             why="reshard shadow " + ("on" if on else "off"))
        return {"shadow": setting, "state": self.store.migration(name).state}

    def verify(self, name: str, max_diffs: int = 20, live: bool = True) -> VerifyReport:
        """Compare; while the migration streams (and ``live``), differences that may be in
        flight are re-checked under row locks after proving catch-up."""
        rec, p = self.record(name)
        streaming = rec.state in states.FLOWING and live
        active = self.store.active()
        report = verify(self.config, p, max_diffs,
                        catch_up=(lambda: self.wait(name, timeout=60)) if streaming else None,
                        active=active[1] if active else None)
        self.store.record_event(name, "verify", equal=report.equal,
                                rechecked=sum(c.rechecked for c in report.checks),
                                rows={c.move + "/" + c.table: c.source_rows for c in report.checks},
                                differences={c.move + "/" + c.table: c.differences[:10] for c in report.checks
                                             if not c.equal})
        return report

    # ---- cutover, rollback, complete ---------------------------------------------------
    def cutover(self, name: str, opts=None):
        """Cut the next wave over (see cutover/orchestrator.py); returns a SwitchResult."""
        from reshard.cutover.orchestrator import SwitchOptions, cutover

        return cutover(self.config, self.store, name, opts or SwitchOptions(), self.progress)

    def wait_for_gates(self, name: str, opts, seconds: float, window=None) -> list:
        """The next cutover wave's gates, looked at until they all pass, ``seconds`` pass,
        or the window closes (cutover/schedule.py); returns the last look."""
        from reshard.cutover.orchestrator import Orchestrator
        from reshard.cutover.schedule import wait_for_gates

        orch = Orchestrator(self.config, self.store, self.progress)
        sw = orch.cutover_switch(name, opts.only)
        return wait_for_gates(lambda: orch.gates(sw, opts), seconds, window, say=self.progress.step)

    def rollback(self, name: str, opts=None):
        from reshard.cutover.orchestrator import SwitchOptions, rollback

        return rollback(self.config, self.store, name, opts or SwitchOptions(), self.progress)

    def complete(self, name: str, **kw):
        from reshard.cutover.complete import complete

        return complete(self.config, self.store, name, progress=self.progress, **kw)  # takes the lease

    # ---- status ---------------------------------------------------------------------
    def status(self, name: str) -> dict:
        rec, p = self.record(name)
        out = rec.to_dict()
        out["migration"] = out.pop("name")
        out["plan"] = {"sources": p.sources(), "targets": p.targets(), "tables": p.tables()}
        out["copy"] = [
            {("table" if k == "tbl" else k): (v.isoformat() if k == "updated_at" and v is not None
                                              else str(v) if k == "snapshot_lsn" and v is not None else v)
             for k, v in row.items() if k != "migration"}
            for row in self.store.copy_progress(name)
        ]
        out["workers"] = [
            {**w, "started_at": w["started_at"].isoformat(), "last_seen": w["last_seen"].isoformat(),
             "stopped_at": w["stopped_at"].isoformat() if w["stopped_at"] else None, "idle_s": float(w["idle_s"])}
            for w in self.store.workers(name)
        ]
        # every part is asked separately: one that cannot be reached is named in
        # "unreachable" and the rest is still shown (the CLI then exits 4)
        unreachable: dict[str, str] = {}
        live = streams_of(self.store, rec, p)
        shown, out["streams"] = self._streams_view(rec, live, unreachable)
        out["waves"] = [{**w, "cut_at": w["cut_at"].isoformat() if w["cut_at"] else None,
                         "pause_ms": float(w["pause_ms"]) if w["pause_ms"] is not None else None,
                         "drain_ms": float(w["drain_ms"]) if w["drain_ms"] is not None else None}
                        for w in self.store.waves(name)]
        attempts = self.store.attempts(name)
        out["last_attempt"] = ({**attempts[-1], "started_at": attempts[-1]["started_at"].isoformat(),
                                "finished_at": attempts[-1]["finished_at"].isoformat()
                                if attempts[-1]["finished_at"] else None} if attempts else None)
        if shown:
            out["lag"] = self._lag_view(name, p, shown, live, unreachable)
        last = self.store.last_verification(name)
        out["verification"] = {"at": last["at"].isoformat(), "equal": bool(last["detail"].get("equal")),
                               "mode": last["detail"].get("mode", "once"),
                               "differences": last["detail"].get("differences") or {}} if last else None
        out["standbys"] = self._standbys_view(live, unreachable)
        out["routers"] = self.routers_view(p.tables(), rec.settings.get("shadow"))
        out["ddl"] = ddl_report.status_view(self.store, name)
        steered = controls_of(rec.settings)
        out["control"] = {"paused": sorted(steered.paused), "throttle": steered.throttle}
        out["events"] = [{**e, "at": e["at"].isoformat()} for e in self.store.recent_events(name, 8)]
        out["unreachable"] = unreachable
        return out

    def _streams_view(self, rec: MigrationRecord, live: list[Stream], unreachable: dict[str, str]
                      ) -> tuple[list[Stream], list[dict]]:
        """The streams that exist (a source's only once the copy created its slot), with
        their connectors' states; Connect unreachable is said once."""
        client = ConnectClient(self.config.connect, timeout=STATUS_TIMEOUT_S)
        starts = {(Direction.FORWARD, r["cluster"]): str(r["consistent_lsn"]) for r in rec.sources}
        starts.update({(Direction.REVERSE, r["cluster"]): r["start_lsn"] for r in self.store.reverse_streams(rec.name)})
        shown, streams = [], []
        origins = self.store.slot_origins(rec.name)
        for st in live:
            if st.direction == Direction.FORWARD and (st.direction, st.cluster) not in starts:
                continue  # the snapshot has not created this source's slot yet
            cs: dict | None = {"connector": {"state": "UNREACHABLE"}, "tasks": []}
            if "connect" not in unreachable:
                try:
                    cs = client.status(st.connector)
                except Unavailable as exc:
                    unreachable["connect"] = str(exc)
            shown.append(st)
            streams.append({
                "direction": st.direction, "cluster": st.cluster, "slot": st.slot, "connector": st.connector,
                "from_lsn": starts.get((st.direction, st.cluster)),
                "state": (cs or {}).get("connector", {}).get("state", "MISSING"),
                "tasks": [t["state"] for t in (cs or {}).get("tasks", [])],
                **({"slot_lineage": {k: origins[st.slot][k] for k in ("lineage", "why", "timeline")}}
                   if st.slot in origins else {}),
            })
        return shown, streams

    def _standbys_view(self, live: list[Stream], unreachable: dict[str, str]) -> list[dict]:
        """The standbys each stream's cluster lists in its DSN: what they lack to carry the
        migration's slots through a promotion, and which slots they hold synchronized now."""
        out = []
        for cluster in sorted({s.cluster for s in live}):
            c = self.config.cluster(cluster)
            if len(c.hosts()) < 2:
                continue
            try:
                with connect(c.dsn, f"cluster {cluster}", autocommit=True) as conn:
                    primary = failover.locate(c, conn)
                    found = failover.standbys(c, primary, conn, sorted(s.slot for s in live if s.cluster == cluster))
            except Unavailable as exc:
                unreachable[f"cluster {cluster}"] = str(exc)
                continue
            out += [{"cluster": cluster, "primary": f"{primary.host}:{primary.port}", **asdict(sb)} for sb in found]
        return out

    def _lag_view(self, name: str, p: Plan, shown: list[Stream], live: list[Stream], unreachable: dict[str, str]
                  ) -> dict:
        """WAL each shown stream's slot has not confirmed, and Kafka records not applied."""
        slots = []
        for st in shown:
            try:
                slots += [s.__dict__ for s in slot_lag(self.config, [st])]
            except Unavailable as exc:
                unreachable[f"cluster {st.cluster}"] = str(exc)
        lag: dict[str, Any] = {"streams": slots}
        try:
            per_topic = topic_lag(self.config, name, Router(p, live).topics)
            lag.update(records=sum(per_topic.values()), topics=per_topic)
        except Unavailable as exc:
            unreachable["kafka"] = str(exc)
            lag["error"] = str(exc)
        return lag

    # ---- teardown -------------------------------------------------------------------
    def forget_bookkeeping(self, name: str, p: Plan) -> None:
        """reshard's rows and replication origins for this migration, on every cluster it touched."""
        for cluster in sorted(set(p.sources()) | set(p.targets())):
            with connect(self.config.cluster(cluster).dsn, f"cluster {cluster}", autocommit=True) as conn:
                shard_schema.forget(conn, name)

    def teardown(self, name: str, drop_target_rows: bool = True) -> list[str]:
        """Abort: drop what the migration created (streams, its bookkeeping and, by default,
        the rows it copied or applied to the targets, and only those). Sources keep every row. Refused once any
        wave is cut over (roll back first). Idempotent; returns what it did."""
        rec, p = self.record(name)
        with self.store.lease(name, "abort"):
            return self._teardown(name, rec, p, drop_target_rows)

    def _teardown(self, name: str, rec: MigrationRecord, p: Plan, drop_target_rows: bool) -> list[str]:
        if any(w["state"] == "cut" for w in self.store.waves(name)):
            raise MigrationError(f"migration {name} has waves cut over; `reshard rollback {name}` first")
        done = drop_streams(self.config, self.store, name, streams_of(self.store, rec, p), p.tables())
        KafkaAdmin(self.config.kafka).delete_topics([dlq_topic(name)])
        if drop_target_rows:
            for move in p.moves:
                with connect(self.config.cluster(move.target).dsn, f"cluster {move.target}", autocommit=True) as conn:
                    shard_schema.writer_session(conn)
                    if not conn.execute("SELECT to_regclass('reshard.copy_cursor')").fetchone()[0]:
                        continue  # reshard never wrote on this target
                    for table in sorted(p.new.groups[move.group].tables):
                        info = table_info(conn, table)
                        if info is not None:
                            n = shard_schema.delete_written_rows(conn, name, move.id, info,
                                                                 p.predicate_sql(move, table, "t"))
                            done.append(f"deleted {n} row(s) of {table} on {move.target} that this migration wrote")
                    for table in drop_created(conn, name):
                        done.append(f"dropped {table} on {move.target}, which this migration created (empty now)")
        self.forget_bookkeeping(name, p)
        if rec.state != State.ABORTED:
            self.store.set_state(name, State.ABORTED, why="abort: what it created was dropped")
        self.store.record_event(name, "migration.teardown", actions=done)
        return done
