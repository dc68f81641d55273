"""Before anything moves: will this migration work here, how long will it take, and is the new
placement balanced? (`reshard check`, and the cluster checks at the top of `start`.)

Each check is named (``--skip-check NAME`` overrides one) and ends ``ok``, ``warn`` or
``fail``; a failure means `start` would refuse or the migration would stop later (a cutover
without a reverse slot, a copy whose slot cannot be made). Two reports come with them:

- **feasibility**: the copy's time from the moving bytes and a read rate measured on each
  source now (one session copying a sample of its moving rows); the WAL the slots keep
  meanwhile from the source's WAL rate measured over a short window; the catch-up after it
  from the write rate into the moving keys and the applier rate (the appliers' own samples
  of this deployment when there are any, else the documented single-worker figure, said so);
  a verdict.
- **skew**: the rows and bytes each destination will hold, and its share of the recent writes
  (from the sources' statistics), each against the mean; a destination far above it is flagged.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reshard.cluster.catalog import check_source, table_info
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.store import ControlStore
from reshard.errors import ReshardError
from reshard.maps.estimate import PlanEstimate, estimate_plan
from reshard.maps.planner import Plan
from reshard.maps.shardmap import table_ident

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_MAJOR = 15
SKEW_LIMIT = 1.5  # a destination above this many times the mean is flagged
WAL_WINDOW_S = 2.0  # how long the WAL and write rates are measured
SAMPLE_ROWS = 20_000  # rows of moving data read to measure a source's copy rate
ASSUMED_APPLY_EVENTS_S = 6_000.0  # one worker on 2 cores (docs/performance.md) when nothing was measured here
APPLIER_START_S = 1.0  # an applier's start (joining its consumer group, the first fetch): ~1 s measured here
BUSY_COMMITS_S = 1.0  # a source committing less has no application the default throttle would spare
CHECKS = ("config", "services", "version", "wal_level", "replication_slots", "wal_senders", "slot_wal_limit", "privileges",
          "tables", "ddl_capture", "connector_login", "skew", "feasibility", "target_disk")
DISK_HEADROOM = 1.5  # moving table bytes -> what the target needs free (indexes, WAL, bloat while applying)


@dataclass
class Check:
    name: str
    result: str  # ok | warn | fail
    detail: str
    cluster: str | None = None


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)
    feasibility: dict[str, Any] = field(default_factory=dict)
    skew: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, result: str, detail: str, cluster: str | None = None) -> None:
        self.checks.append(Check(name, result, detail, cluster))

    def failed(self, skip: tuple[str, ...] = ()) -> list[Check]:
        return [c for c in self.checks if c.result == FAIL and c.name not in skip]

    def to_dict(self) -> dict[str, Any]:
        return {"checks": [asdict(c) for c in self.checks], "feasibility": self.feasibility, "skew": self.skew,
                "ok": not self.failed()}


def _setting(conn: psycopg.Connection[Any], name: str) -> str:
    return str(conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0])


def config_checks(config: Config, out: Preflight) -> None:
    """What the config alone tells (no server asked; `reshard config` runs these): each
    connector's password reaches Debezium as a config-provider reference the Connect worker
    can resolve, never as the secret."""
    import os

    from reshard.secrets import REFERENCE, connector_password_error

    for name, c in sorted(config.clusters.items()):
        ref = REFERENCE.match(c.connect_password or "")
        if ref and ref["provider"] == "file" and not ref["arg"].startswith("/"):
            out.add("config", FAIL, f"clusters.{name}.connect_password: the Connect worker reads {ref['arg']!r} "
                    "from its own filesystem; give an absolute path", name)
            continue
        has_secret = bool(c.params(for_connect=True).get("password") or c.params().get("password")
                          or os.environ.get("PGPASSWORD"))
        if has_secret and not c.connect_password and not config.connect.secrets_dir:
            out.add("config", FAIL, connector_password_error(name), name)
        else:
            out.add("config", OK, "connector password: " + (
                "the Connect worker resolves " + c.connect_password if c.connect_password else
                f"written to {config.connect.secrets_dir} for the worker's file provider" if has_secret
                else "none in the config or PGPASSWORD (a password file is checked at start)"), name)


def cluster_checks(config: Config, plan: Plan, out: Preflight) -> None:
    """What each cluster must offer: a supported major, logical decoding, a free slot and WAL
    sender (sources now, targets at the cutover for reverse replication), the role's rights."""
    roles = {c: "source" for c in plan.sources()}
    for t in plan.targets():
        roles[t] = "source and target" if t in roles else "target"
    for cluster, role in sorted(roles.items()):
        try:
            conn = connect(config.cluster(cluster).dsn, f"cluster {cluster}", autocommit=True)
        except ReshardError as exc:
            out.add("version", FAIL, str(exc), cluster)
            continue
        with conn:
            major = int(_setting(conn, "server_version_num")) // 10000
            out.add("version", OK if major >= MIN_MAJOR else FAIL,
                    f"PostgreSQL {major}" + ("" if major >= MIN_MAJOR else f"; reshard needs {MIN_MAJOR} or newer"),
                    cluster)
            level = _setting(conn, "wal_level")
            why = "its slot for the copy and the stream" if "source" in role else "the reverse stream at cutover"
            out.add("wal_level", OK if level == "logical" else FAIL,
                    f"wal_level={level}" + ("" if level == "logical" else f"; {why} needs wal_level=logical"), cluster)
            slots = int(_setting(conn, "max_replication_slots"))
            used = conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0]
            out.add("replication_slots", OK if slots - used >= 1 else FAIL,
                    f"{slots - used} of max_replication_slots={slots} free ({role} needs 1)", cluster)
            senders = int(_setting(conn, "max_wal_senders"))
            busy = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]
            out.add("wal_senders", OK if senders - busy >= 1 else FAIL,
                    f"{senders - busy} of max_wal_senders={senders} free", cluster)
            keep = str(conn.execute("SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size'"
                                    ).fetchone()[0])  # in MB; current_setting() would say '1GB'
            out.add("slot_wal_limit", WARN if keep == "-1" else OK,
                    "max_slot_wal_keep_size=-1: a stalled stream keeps WAL until the disk is full; set a limit "
                    "above the WAL the copy will keep (see feasibility)" if keep == "-1"
                    else f"max_slot_wal_keep_size={keep}MB", cluster)
            role_row = conn.execute("SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user"
                                    ).fetchone()
            rep, sup = role_row if role_row else (False, False)
            create = conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]
            missing = [w for w, has in (("REPLICATION", rep or sup), ("CREATE on the database", create)) if not has]
            out.add("privileges", FAIL if missing else OK,
                    f"the role {conn.info.user} lacks {', '.join(missing)} (docs/roles.sql)" if missing
                    else f"role {conn.info.user}" + (" (superuser)" if sup else ""), cluster)
            trigger = conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = 'reshard_ddl_capture'").fetchone()
            out.add("ddl_capture", OK if sup or trigger else WARN,
                    "schema changes will be captured" if sup or trigger else
                    "schema changes cannot be captured (the event trigger needs a superuser once: docs/roles.sql); "
                    "a change will pause the applier as drift", cluster)


def table_checks(config: Config, plan: Plan, out: Preflight) -> None:
    """Every moving table on every source: present, a primary key holding the shard key, a replica identity."""
    for source in plan.sources():
        with connect(config.cluster(source).dsn, f"source cluster {source}") as conn:
            for move in plan.moves_from(source):
                group = plan.new.groups[move.group]
                for table in sorted(group.tables):
                    info = table_info(conn, table)
                    if info is None:
                        out.add("tables", FAIL, f"{table} does not exist on {source}", source)
                        continue
                    try:
                        check_source(info, source, group.key_columns(table))
                        out.add("tables", OK, f"{table}: primary key ({', '.join(info.pk)}) holds the shard key",
                                source)
                    except ReshardError as exc:
                        out.add("tables", FAIL, str(exc), source)


def service_checks(config: Config, out: Preflight) -> None:
    from reshard.kafka.admin import KafkaAdmin
    from reshard.kafka.connect_client import ConnectClient
    from reshard.stack.connect import DEBEZIUM_CLASS

    try:
        KafkaAdmin(config.kafka).check()
        out.add("services", OK, f"Kafka at {config.kafka.bootstrap_servers}")
    except ReshardError as exc:
        out.add("services", FAIL, f"Kafka: {exc}")
    try:
        client = ConnectClient(config.connect)
        plugins = client.plugin_versions()
        out.add("services", OK if DEBEZIUM_CLASS in plugins else FAIL,
                f"Kafka Connect {client.version()} at {config.connect.url}"
                + (f" with Debezium's PostgreSQL connector {plugins[DEBEZIUM_CLASS]}" if DEBEZIUM_CLASS in plugins
                   else f" has no {DEBEZIUM_CLASS} plugin"))
    except ReshardError as exc:
        out.add("services", FAIL, f"Kafka Connect: {exc}")
    if config.kafka.schema_registry_url:
        from reshard.http import Endpoint, HttpClient

        try:
            HttpClient(Endpoint(config.kafka.schema_registry_url, "the schema registry", timeout=10.0)).call(
                "GET", "/subjects")
            out.add("services", OK, f"schema registry at {config.kafka.schema_registry_url}")
        except Exception as exc:
            out.add("services", FAIL, f"schema registry at {config.kafka.schema_registry_url}: {exc}")


def connector_login_checks(config: Config, plan: Plan, out: Preflight) -> None:
    """Whether the Connect worker can log into each cluster Debezium will capture (sources
    now, targets for the reverse stream at cutover) with what reshard would register: its
    config provider resolves the password reference and the login works from the worker's
    side of the network. In ``secrets_dir`` mode the password file is written, as `start`
    would write it."""
    from reshard.kafka.connect_client import ConnectClient
    from reshard.kafka.debezium_login import address, connect_password, login
    from reshard.stack.connect import DEBEZIUM_CLASS

    client = ConnectClient(config.connect, timeout=60.0)
    for cluster in sorted({*plan.sources(), *plan.targets()}):
        try:
            settings = login(config, cluster, connect_password(config, cluster), address(config, cluster))
        except ReshardError as exc:
            out.add("connector_login", FAIL, str(exc), cluster)
            continue
        errors = client.validate({"connector.class": DEBEZIUM_CLASS, "name": f"reshard-check-{cluster}",
                                  "topic.prefix": "reshard-check", "plugin.name": "pgoutput", **settings})
        out.add("connector_login", FAIL if errors else OK,
                "; ".join(errors) if errors else f"Debezium on {config.connect.url} logs in as "
                f"{settings['database.user']} at {settings['database.hostname']}:{settings['database.port']}", cluster)


def _sample_rate(conn: psycopg.Connection[Any], plan: Plan, source: str) -> float | None:
    """Bytes/s one session reads of this source's moving rows (COPY to the client, a sample)."""
    for move in plan.moves_from(source):
        for table in sorted(plan.new.groups[move.group].tables):
            query = sql.SQL("COPY (SELECT * FROM {} t WHERE {} LIMIT {}) TO STDOUT").format(
                table_ident(table), plan.predicate_sql(move, table, "t"), sql.Literal(SAMPLE_ROWS))
            started, nbytes = time.perf_counter(), 0
            with conn.cursor().copy(query) as cp:
                for chunk in cp:
                    nbytes += len(chunk)
            seconds = time.perf_counter() - started
            if nbytes > 0 and seconds > 0:
                return nbytes / seconds
    return None


def _one(conn: psycopg.Connection[Any], query: str) -> tuple[Any, ...]:
    row = conn.execute(query).fetchone()
    assert row is not None  # an aggregate-free SELECT of expressions returns one row
    return tuple(row)


def _rates(conn: psycopg.Connection[Any]) -> tuple[float, float]:
    """(WAL bytes/s, commits/s) on the cluster over WAL_WINDOW_S."""
    q = ("SELECT pg_current_wal_lsn(), (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())")
    lsn0, x0 = _one(conn, q)
    t0 = time.monotonic()
    time.sleep(WAL_WINDOW_S)
    conn.execute("SELECT pg_stat_clear_snapshot()")
    lsn1, x1 = _one(conn, q)
    seconds = time.monotonic() - t0
    wal = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (lsn1, lsn0)).fetchone()[0]
    return float(wal) / seconds, max(0, int(x1) - int(x0)) / seconds


def _writes(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute("SELECT coalesce(n_tup_ins + n_tup_upd + n_tup_del, 0) FROM pg_stat_user_tables "
                       "WHERE relid = %s::regclass", (table,)).fetchone()
    return int(row[0]) if row else 0


def estimates(config: Config, store: ControlStore | None, plan: Plan, out: Preflight,
              copy_model: Callable[[float, float], float] | None = None) -> None:
    """The feasibility report and the skew check (both from the servers, measured now).
    ``copy_model(bytes, read rate)`` is the default throttle's copy time beside an application
    (the snapshotter's ramp_seconds, passed in by the caller: the kernel does not import the
    stages); without it, or on a source committing less than BUSY_COMMITS_S, the copy is
    predicted unthrottled."""
    est: PlanEstimate = estimate_plan(config, plan)
    per_source: dict[str, dict[str, Any]] = {}
    writes_to: dict[str, float] = {}
    rows_to: dict[str, int] = {}
    bytes_to: dict[str, int] = {}
    for m in est.moves:
        rows_to[m.move.target] = rows_to.get(m.move.target, 0) + m.rows
        bytes_to[m.move.target] = bytes_to.get(m.move.target, 0) + m.bytes
    for source in plan.sources():
        with connect(config.cluster(source).dsn, f"source cluster {source}", autocommit=True) as conn:
            rate = _sample_rate(conn, plan, source)
            wal_s, commits_s = _rates(conn)
            moving = sum(m.bytes for m in est.moves if m.move.source == source)
            unthrottled_s = moving / rate if rate else None
            # the default throttle holds nothing back on a source without an application (no commits)
            busy = commits_s >= BUSY_COMMITS_S
            copy_s = copy_model(moving, rate) if copy_model and rate and busy else unthrottled_s
            share = 0.0
            for m in est.moves:
                if m.move.source != source:
                    continue
                info = table_info(conn, m.table)
                total = max(1, info.est_rows if info else 1)
                w = _writes(conn, m.table) * min(1.0, m.rows / total)
                writes_to[m.move.target] = writes_to.get(m.move.target, 0.0) + w
                share = max(share, min(1.0, m.rows / total))
            per_source[source] = {
                "moving_bytes": moving, "sample_read_bytes_per_s": round(rate) if rate else None,
                "copy_seconds": round(copy_s, 1) if copy_s is not None else None,
                "copy_seconds_unthrottled": round(unthrottled_s, 1) if unthrottled_s is not None else None,
                "wal_bytes_per_s": round(wal_s), "commits_per_s": round(commits_s, 1),
                "wal_kept_during_copy_bytes": round(wal_s * copy_s) if copy_s is not None else None,
                "backlog_events": round(commits_s * share * copy_s) if copy_s is not None else None}
    measured = _apply_rate(store)
    apply_s = measured or ASSUMED_APPLY_EVENTS_S
    incoming = sum(s["commits_per_s"] * 1.0 for s in per_source.values())  # an upper bound: every commit moves
    backlog = sum(s["backlog_events"] or 0 for s in per_source.values())
    catch_up_s = APPLIER_START_S + backlog / (apply_s - incoming) if apply_s > incoming else None
    copy_s = max((s["copy_seconds"] or 0 for s in per_source.values()), default=0)
    verdict = ("feasible" if catch_up_s is not None else
               "the appliers would not catch up: the sources commit faster than one worker applies; add workers")
    out.feasibility = {"sources": per_source, "copy_seconds": copy_s,
                       "copy_model": "the default adaptive throttle: unthrottled on a source without commits, "
                       "else from a slow start growing within the latency budget (an application the copy slows "
                       "holds it lower)" if copy_model else "unthrottled", "catch_up_seconds":
                       None if catch_up_s is None else round(catch_up_s, 1),
                       "apply_events_per_s": round(apply_s), "apply_rate": "measured here" if measured else
                       "assumed (no applier has run on this deployment: docs/performance.md)", "verdict": verdict}
    out.add("feasibility", OK if catch_up_s is not None else WARN,
            f"copy ~{copy_s:,.0f} s, then catch-up ~{catch_up_s or 0:,.0f} s; {verdict}")
    targets = sorted(rows_to)
    for t in targets:
        disk_check(config, t, bytes_to[t], out)
    if len(targets) > 1:
        mean_rows = statistics.mean(rows_to.values()) or 1
        mean_bytes = statistics.mean(bytes_to.values()) or 1
        mean_writes = statistics.mean(writes_to.get(t, 0.0) for t in targets) or 1
        for t in targets:
            vs = (round(rows_to[t] / mean_rows, 2), round(bytes_to[t] / mean_bytes, 2),
                  round(writes_to.get(t, 0) / mean_writes, 2))
            out.skew.append({"destination": t, "rows": rows_to[t], "bytes": bytes_to[t],
                             "recent_writes": round(writes_to.get(t, 0)), "rows_vs_mean": vs[0],
                             "bytes_vs_mean": vs[1], "writes_vs_mean": vs[2]})
            worst = max(vs)
            out.add("skew", WARN if worst > SKEW_LIMIT else OK,
                    f"{t} takes {vs[0]}x the mean rows, {vs[1]}x the bytes, {vs[2]}x the recent writes"
                    + (" — far above the others" if worst > SKEW_LIMIT else ""), t)


def disk_check(config: Config, target: str, incoming: int, out: Preflight) -> None:
    """Free disk on a target against the bytes moving to it (times DISK_HEADROOM). PostgreSQL
    does not say its free disk over SQL, so it is measured only where the target runs on this
    host (its data directory readable here); elsewhere the need is said as a warning."""
    import shutil

    need = int(incoming * DISK_HEADROOM)
    with connect(config.cluster(target).dsn, f"target cluster {target}", autocommit=True) as conn:
        local = conn.execute("SELECT coalesce(host(inet_server_addr()) IN ('127.0.0.1', '::1'), true)").fetchone()[0]
        try:
            data_dir = _setting(conn, "data_directory")
        except psycopg.Error:  # needs pg_read_all_settings
            data_dir = None
    try:
        free = shutil.disk_usage(data_dir).free if local and data_dir else None
    except OSError:
        free = None
    if free is None:
        out.add("target_disk", WARN, f"cannot see {target}'s disk from here: it needs about {need:,} bytes free "
                f"({incoming:,} moving, x{DISK_HEADROOM} for indexes and WAL)", target)
    else:
        out.add("target_disk", OK if free >= need else FAIL,
                f"{free:,} bytes free for about {need:,} needed ({incoming:,} moving, x{DISK_HEADROOM})", target)


def _apply_rate(store: ControlStore | None) -> float | None:
    """Events/s the appliers of this deployment reached (the best recent sample), if any ran."""
    if store is None:
        return None
    try:
        return store.best_apply_rate()
    except ReshardError:
        return None


def run(config: Config, store: ControlStore | None, plan: Plan, *, full: bool = True,
        copy_model: Callable[[float, float], float] | None = None) -> Preflight:
    """Every check; ``full`` adds the measured estimates (a few seconds per source)."""
    out = Preflight()
    config_checks(config, out)
    service_checks(config, out)
    cluster_checks(config, plan, out)
    table_checks(config, plan, out)
    if not out.failed():
        connector_login_checks(config, plan, out)
    if full and not out.failed():
        estimates(config, store, plan, out, copy_model)
    return out


def before_start(config: Config, plan: Plan, skip: tuple[str, ...], say: Any) -> None:
    """The services and cluster checks at the top of a first `start` (its own table checks
    follow): a failure refuses before any slot, connector or row, naming every failing check;
    warnings are said. Services down is Unavailable (exit 4), anything else SetupError (3)."""
    from reshard.errors import SetupError, Unavailable

    out = Preflight()
    config_checks(config, out)
    service_checks(config, out)
    if not out.failed(skip):
        cluster_checks(config, plan, out)
    if not out.failed(skip):
        connector_login_checks(config, plan, out)
    for c in out.checks:
        if c.result == WARN and c.name not in skip:
            say(f"warning: {c.name}{' on ' + c.cluster if c.cluster else ''}: {c.detail}")
    failed = out.failed(skip)
    if not failed:
        return
    text = "; ".join(f"{c.name}{' on ' + c.cluster if c.cluster else ''}: {c.detail}" for c in failed)
    if any(c.name == "services" for c in failed):
        raise Unavailable(f"{text}; nothing was created")
    raise SetupError(f"start refused before creating anything: {text}. `reshard check --to MAP` reports every "
                     "check; `--skip-check NAME` accepts a failure you know about")
