"""The shard-side fence: a trigger that stops writes to keys a shard does not own.

Routers can be stale; the fence on the shard is what makes a stale writer harmless
(invariant 4). On every sharded table reshard installs a BEFORE INSERT/UPDATE/DELETE
row trigger (ENABLE ALWAYS) whose function has the shard's rules compiled into it:
its epoch, the predicate of the keys it owns at that epoch, and the predicate of the
keys that are fenced (switching owner). A write to a fenced key fails with SQLSTATE
RS001, a write to a key owned elsewhere with RS002; both messages name the key, its
owner and the epoch. reshard's own copy and applier sessions (``reshard.writer``)
pass. ``reshard.shard_epoch()`` returns the epoch, for stamping rows.

The rules live in the function body, not in a table the trigger reads: a writer
blocked behind a rule change takes its table lock, which makes it see the committed
new function, whereas a table read could use a snapshot taken before the change.

Changing the rules takes a SHARE ROW EXCLUSIVE lock on each sharded table in turn, in a
transaction per table: it waits for every write in progress on that table to commit (a
write that passed the old check cannot commit after the change) and holds new writes
back until the new rules commit. One table at a time, so a fence change can never be
half of a lock cycle with an application transaction that writes several tables in
any order (invariant 9); ``lock_timeout`` bounds the whole change.

The server, not this process, bounds how long such a transaction holds its lock: each
one sets ``idle_in_transaction_session_timeout`` and ``statement_timeout`` locally to
``hold_ms``, so a reshard process frozen inside it (a paused VM, a swap storm, SIGSTOP)
has its session ended and the transaction rolled back, and the application's writes
flow again, instead of waiting as long as the freeze lasts.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql

from reshard.cluster.shard_schema import WRITER_GUC
from reshard.errors import BudgetExceeded, ReshardError, WaitTimeout
from reshard.failpoints import failpoint
from reshard.maps.planner import Move, Plan
from reshard.maps.shardmap import FALSE, ShardMap, column, table_ident
from reshard.retry import retry

FENCED = "RS001"  # the key is switching owners: retry shortly
NOT_OWNER = "RS002"  # the key belongs to another cluster at this epoch: refresh the map
TRIGGER = "reshard_fence"

Predicate = Callable[[str, str], sql.Composable]  # (table, row alias) -> SQL boolean


@dataclass(frozen=True)
class FenceSpec:
    """What one cluster enforces."""

    cluster: str
    epoch: int
    owner_map: ShardMap  # names the owner of a rejected key in messages
    owned: Predicate
    fenced: Predicate
    mode: str  # steady | switching | fenced
    note: str = ""
    tables: tuple[str, ...] = field(default=())

    def table_list(self) -> list[str]:
        return list(self.tables) or self.owner_map.tables()


def steady(cluster: str, epoch: int, m: ShardMap) -> FenceSpec:
    """Accept exactly the keys ``m`` gives ``cluster``."""
    return FenceSpec(cluster, epoch, m,
                     owned=lambda t, a: m.group_of(t).predicate_sql(t, cluster, a),
                     fenced=lambda t, a: FALSE, mode="steady")


def switching(cluster: str, epoch: int, old: ShardMap, new: ShardMap) -> FenceSpec:
    """Between two maps: accept only keys both give ``cluster``; fence keys it is losing.

    Installed on every cluster before any cluster takes the new map, so no key is ever
    accepted by two clusters: for a moment a moving key is accepted by none.
    """
    def owned(t: str, a: str) -> sql.Composable:
        return sql.SQL("({} AND {})").format(old.group_of(t).predicate_sql(t, cluster, a),
                                             new.group_of(t).predicate_sql(t, cluster, a))

    def fenced(t: str, a: str) -> sql.Composable:
        return sql.SQL("({} AND NOT {})").format(old.group_of(t).predicate_sql(t, cluster, a),
                                                 new.group_of(t).predicate_sql(t, cluster, a))

    return FenceSpec(cluster, epoch, new, owned, fenced, mode="switching")


def moving(cluster: str, epoch: int, m: ShardMap, p: Plan, moves: list[Move], note: str = "",
           deadline: str | None = None) -> FenceSpec:
    """Own ``m``'s keys, but fence the keys these moves carry out of ``cluster``.

    With ``deadline`` (a timestamptz on this cluster's clock) the fence lapses by itself
    at that moment: the write-pause budget holds even if reshard dies mid-cutover. That
    is safe because a cutover replaces this fence (under the same lock, checking the
    deadline) before any other cluster may accept these keys.
    """
    mine = [mv for mv in moves if mv.source == cluster]

    def fenced(t: str, a: str) -> sql.Composable:
        preds = [p.predicate_sql(mv, t, a) for mv in mine if t in p.new.groups[mv.group].tables]
        if not preds:
            return FALSE
        body = sql.SQL("({})").format(sql.SQL(" OR ").join(preds))
        if deadline is None:
            return body
        return sql.SQL("(clock_timestamp() < {}::timestamptz AND {})").format(sql.Literal(deadline), body)

    return FenceSpec(cluster, epoch, m, owned=lambda t, a: m.group_of(t).predicate_sql(t, cluster, a),
                     fenced=fenced, mode="fenced", note=note)


def function_name(table: str) -> str:
    base = "fence_" + re.sub(r"[^a-z0-9_]", "_", table.lower())
    if len(base) > 55:
        base = base[:46] + "_" + hashlib.sha1(table.encode()).hexdigest()[:8]
    return base


_FENCED_CHECK = """
    IF {fenced} THEN
      RAISE EXCEPTION USING ERRCODE = {code},
        MESSAGE = format({message}, {key_text}, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME),
        DETAIL = format({detail}, {owner}),
        HINT = 'retry after the switch completes (reshard routers retry by themselves)';
    END IF;"""

_CHECK = """
  IF {when} THEN{fenced_check}
    IF NOT {owned} THEN
      RAISE EXCEPTION USING ERRCODE = {code},
        MESSAGE = format({message}, {key_text}, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, {owner}),
        HINT = 'refresh the shard map and write to the owner';
    END IF;
  END IF;"""

_FUNCTION = """
CREATE OR REPLACE FUNCTION reshard.{name}() RETURNS trigger
LANGUAGE plpgsql AS $fence$
{comment}
BEGIN
  IF current_setting({writer_guc}, true) = 'applier' THEN
    RETURN COALESCE(NEW, OLD);
  END IF;{checks}
  RETURN COALESCE(NEW, OLD);
END
$fence$;
"""


def trigger_function_sql(spec: FenceSpec, table: str) -> sql.Composed:
    """The plpgsql trigger function for one table, with the rules compiled in."""
    group = spec.owner_map.group_of(table)
    cols = group.key_columns(table)
    checks = []
    key_changed = sql.SQL(" OR ").join(sql.SQL("{} IS DISTINCT FROM {}").format(column(c, "NEW"), column(c, "OLD"))
                                       for c in cols)
    for row in ("NEW", "OLD"):
        key_text = sql.SQL(" || ',' || ").join(sql.SQL("{}::text").format(column(c, row)) for c in cols)
        # an UPDATE that keeps the key is fully checked through NEW; OLD only matters when the key moves
        when = (sql.SQL("TG_OP IN ('INSERT', 'UPDATE')") if row == "NEW"
                else sql.SQL("TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ({}))").format(key_changed))
        fenced = spec.fenced(table, row)
        owner = group.owner_sql(table, row)
        fenced_check = sql.SQL("") if fenced == FALSE else sql.SQL(_FENCED_CHECK).format(
            fenced=fenced, code=sql.Literal(FENCED), key_text=key_text, owner=owner,
            message=sql.Literal(f"reshard: key %s of %s is fenced on {spec.cluster} at epoch {spec.epoch}: "
                                "it is switching owner"),
            detail=sql.Literal(f"owner at epoch {spec.epoch}: %s"))
        checks.append(sql.SQL(_CHECK).format(
            when=when, fenced_check=fenced_check, owned=spec.owned(table, row), code=sql.Literal(NOT_OWNER),
            key_text=key_text, owner=owner,
            message=sql.Literal(f"reshard: key %s of %s belongs to %s at epoch {spec.epoch}, not to {spec.cluster}")))
    note = " ".join(spec.note.split())  # one line: it is a comment
    return sql.SQL(_FUNCTION).format(
        name=sql.Identifier(function_name(table)), writer_guc=sql.Literal(WRITER_GUC), checks=sql.Composed(checks),
        comment=sql.SQL(f"-- reshard fence for {table} on {spec.cluster}: epoch {spec.epoch}, {spec.mode}. {note}"))


STATE_SQL = """
CREATE TABLE IF NOT EXISTS reshard.fence_state (
    tbl          text PRIMARY KEY,
    cluster      text NOT NULL,
    epoch        bigint NOT NULL,
    mode         text NOT NULL,
    note         text NOT NULL DEFAULT '',
    installed_at timestamptz NOT NULL DEFAULT now()
);
"""


class FenceError(ReshardError):
    """A fence could not be installed or removed."""


def server_deadline(conn: psycopg.Connection[Any], seconds: float) -> str:
    """This cluster's clock plus ``seconds``, as a timestamptz literal."""
    return conn.execute("SELECT (clock_timestamp() + make_interval(secs => %s))::text", (seconds,)).fetchone()[0]


def _present(conn: psycopg.Connection[Any], tables: list[str]) -> list[str]:
    return [t for t in tables if conn.execute("SELECT to_regclass(%s)", (table_ident(t).as_string(conn),)).fetchone()[0]]


TRY_LOCK_MS = 200  # one try's wait for a table, far below PostgreSQL's default deadlock_timeout (1 s)
HOLD_MS = 2000  # default server-side limit on a fence transaction (see the module docstring)
MIN_HOLD_MS = 100  # the least a caller's remaining budget may shrink that limit to


@contextmanager
def _one_table(conn: psycopg.Connection[Any], table: str, give_up: float, changed: list[str],
               hold_ms: int = HOLD_MS) -> Iterator[None]:
    """A transaction that holds exactly one table's SHARE ROW EXCLUSIVE lock.

    This is what keeps fence changes out of deadlocks (invariant 9): a transaction that
    locked one table and then waited for a second could close a cycle with an application
    transaction that writes them in the other order (seen under a TPC-B-like load, where
    some writer is always between its two tables). Holding one table at a time, the fence
    change waits for nobody who waits for it. Each table's change is complete on its own:
    its writes in progress are waited out and new ones see the new rules; a caller that
    needs the whole cluster changed (a cutover) acts only after every table is.

    A try waits at most TRY_LOCK_MS; where allowed, this session is also the one that
    would detect a cycle (deadlock_timeout 10 ms), so an application never sees 40P01
    from it. Tries repeat after a jittered pause until ``give_up`` (monotonic time).

    The transaction ends on the server if this process stops acting in it for ``hold_ms``
    (or one statement takes that long): a frozen caller cannot hold the lock longer.
    """
    hold = str(max(MIN_HOLD_MS, int(hold_ms)))
    with conn.transaction():
        conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, true), "
                     "set_config('statement_timeout', %s, true)", (hold, hold))
        _lock_one(conn, table, give_up, changed)
        yield


def _lock_one(conn: psycopg.Connection[Any], table: str, give_up: float, changed: list[str]) -> None:
    """The tries of ``_one_table``, each in a savepoint that gives its wait back on failure."""
    detector = conn.info.parameter_status("is_superuser") == "on"  # reported by the server: no round trip
    tries = 0

    def once() -> None:
        nonlocal tries
        tries += 1
        left_ms = int((give_up - time.monotonic()) * 1000)
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (str(max(1, min(TRY_LOCK_MS, left_ms))),))
            if detector:
                conn.execute("SET LOCAL deadlock_timeout = 10")
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table_ident(table)))
    try:
        retry(once, on=(pgerr.LockNotAvailable, pgerr.DeadlockDetected), for_s=give_up - time.monotonic(),
              delay=0.002, jitter=0.013)
    except (pgerr.LockNotAvailable, pgerr.DeadlockDetected):
        done = f"; already changed: {', '.join(changed)}" if changed else "; nothing was changed"
        raise WaitTimeout(f"writes in progress kept {table} locked past the lock timeout ({tries} tries){done}") from None


def install(conn: psycopg.Connection[Any], spec: FenceSpec, lock_timeout_ms: int = 2000,
            only_before: str | None = None, hold_ms: int = HOLD_MS, point: str = "install") -> list[str]:
    """Install or replace the fence on every table of the spec present on this cluster.

    Idempotent. ``conn`` must be in autocommit mode; each table changes in a transaction
    of its own (see ``_one_table``), all within ``lock_timeout_ms``. With ``only_before``
    (a timestamptz), a table changes only if, once it is locked, this cluster's clock is
    still before it; else BudgetExceeded. A failure leaves the tables before it changed
    and the rest not: callers back out (cutover) or rerun (the fence command). No table's
    lock is held longer than ``hold_ms``, enforced by the server (see ``_one_table``).
    ``point`` names the failpoint ``<point>:locked``, reached holding the first table's lock.
    Returns the tables fenced.
    """
    found = _found(conn, spec.table_list())
    tables = sorted(t for t, (_trigger, _state) in found.items())
    if not tables:
        return []
    if not next(iter(found.values()))[1]:
        conn.execute(STATE_SQL)
    give_up = time.monotonic() + lock_timeout_ms / 1000
    changed: list[str] = []
    for t in tables:
        with _one_table(conn, t, give_up, changed, hold_ms):
            failpoint(point, "locked")
            # the table is locked: its changes go in one round trip (each costs a millisecond or
            # more inside the write pause on a loaded host), as one simple-query message, not a
            # pipeline: the server runs it whole and then waits idle in the transaction, where
            # hold_ms ends it if this process froze; between a pipeline's statements nothing would
            changes = [
                sql.SQL("CREATE OR REPLACE FUNCTION reshard.shard_epoch() RETURNS bigint LANGUAGE sql STABLE "
                        "AS $$ SELECT {}::bigint $$").format(sql.Literal(int(spec.epoch))),
                trigger_function_sql(spec, t),
                *([] if found[t][0] else [sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE ON {} "
                    "FOR EACH ROW EXECUTE FUNCTION reshard.{}()").format(
                    sql.Identifier(TRIGGER), table_ident(t), sql.Identifier(function_name(t)))]),
                sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(table_ident(t), sql.Identifier(TRIGGER)),
                sql.SQL("INSERT INTO reshard.fence_state (tbl, cluster, epoch, mode, note) VALUES ({}) "
                        "ON CONFLICT (tbl) DO UPDATE SET cluster = EXCLUDED.cluster, epoch = EXCLUDED.epoch, "
                        "mode = EXCLUDED.mode, note = EXCLUDED.note, installed_at = now()").format(
                    sql.SQL(", ").join(map(sql.Literal, (t, spec.cluster, spec.epoch, spec.mode, spec.note)))),
            ]
            if only_before is not None:  # read first, on the locked table; if late, none of it commits
                changes.insert(0, sql.SQL("SELECT clock_timestamp() < {}::timestamptz").format(
                    sql.Literal(only_before)))
            cur = conn.execute(sql.SQL(";\n").join(changes))
            if only_before is not None and not cur.fetchone()[0]:
                raise BudgetExceeded(f"{spec.cluster}: the fence deadline {only_before} passed before the flip")
        changed.append(t)
    return tables


def _found(conn: psycopg.Connection[Any], tables: list[str]) -> dict[str, tuple[bool, bool]]:
    """Of these tables, those present on this cluster: whether each has reshard's fence
    trigger already, and whether reshard.fence_state exists (the same for all); one round trip."""
    rows = conn.execute(
        "SELECT t, EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(q) AND tgname = %s), "
        "to_regclass('reshard.fence_state') IS NOT NULL "
        "FROM unnest(%s::text[], %s::text[]) AS x(t, q) WHERE to_regclass(q) IS NOT NULL",
        (TRIGGER, tables, [table_ident(t).as_string(conn) for t in tables])).fetchall()
    return {r[0]: (bool(r[1]), bool(r[2])) for r in rows}


def remove(conn: psycopg.Connection[Any], tables: list[str], lock_timeout_ms: int = 2000) -> list[str]:
    """Drop the fence from these tables (those that have one), a table at a time. Idempotent."""
    present = set(_present(conn, tables))
    give_up = time.monotonic() + lock_timeout_ms / 1000
    removed: list[str] = []
    has_state = conn.execute("SELECT to_regclass('reshard.fence_state')").fetchone()[0]
    for t in sorted(tables):
        if t in present:
            with _one_table(conn, t, give_up, removed):
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(TRIGGER), table_ident(t)))
            removed.append(t)
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS reshard.{}()").format(sql.Identifier(function_name(t))))
        if has_state:
            conn.execute("DELETE FROM reshard.fence_state WHERE tbl = %s", (t,))
    return removed


def state(conn: psycopg.Connection[Any]) -> list[dict]:
    if not conn.execute("SELECT to_regclass('reshard.fence_state')").fetchone()[0]:
        return []
    rows = conn.execute(
        "SELECT s.tbl, s.cluster, s.epoch, s.mode, s.note, s.installed_at, "
        "EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = to_regclass(s.tbl) AND tg.tgname = %s "
        "AND tg.tgenabled = 'A') AS active FROM reshard.fence_state s ORDER BY s.tbl",
        (TRIGGER,),
    ).fetchall()
    keys = ("table", "cluster", "epoch", "mode", "note", "installed_at", "active")
    return [dict(zip(keys, r)) for r in rows]


# ---- across clusters -----------------------------------------------------------------

def _cluster_conn(config, cluster: str) -> psycopg.Connection[Any]:
    from reshard.cluster import shard_schema
    from reshard.cluster.session import connect

    conn = connect(config.cluster(cluster).dsn, f"cluster {cluster}", autocommit=True)
    shard_schema.install(conn)
    return conn


def install_everywhere(config, specs: list[FenceSpec], lock_timeout_ms: int = 2000) -> dict[str, list[str]]:
    """Install each spec on its cluster, in the order given; returns tables per cluster."""
    done: dict[str, list[str]] = {}
    for spec in specs:
        with _cluster_conn(config, spec.cluster) as conn:
            done[spec.cluster] = install(conn, spec, lock_timeout_ms)
    return done


def fence_map(config, epoch: int, m: ShardMap, lock_timeout_ms: int = 2000) -> dict[str, list[str]]:
    """The steady fence of map ``m`` on every cluster of reshard.yaml that holds its tables."""
    return install_everywhere(config, [steady(c, epoch, m) for c in sorted(config.clusters)], lock_timeout_ms)


def switch_ownership(config, store, new_epoch: int, lock_timeout_ms: int = 2000) -> dict:
    """Move key ownership (and routing) from the active map to ``new_epoch``.

    Phase 1 installs the switching fence everywhere (each cluster accepts only the keys
    both maps give it); phase 2 installs the new map's steady fence everywhere; then the
    control database activates the epoch and routers are notified. At no instant do two
    clusters accept the same key. This moves no rows: cutover copies and drains first.
    A failure in phase 1 restores the old fence on the clusters already switched.
    """
    active = store.active()
    if active is None:
        raise FenceError("no active map to switch from")
    old_epoch, old = active
    new = store.get_map(new_epoch)
    if new_epoch <= old_epoch:
        raise FenceError(f"epoch {new_epoch} is not newer than the active epoch {old_epoch}")
    clusters = sorted(c for c in config.clusters if c in old.clusters() | new.clusters())
    switched: list[str] = []
    try:
        for c in clusters:
            install_everywhere(config, [switching(c, new_epoch, old, new)], lock_timeout_ms)
            switched.append(c)
    except Exception:
        install_everywhere(config, [steady(c, old_epoch, old) for c in switched], lock_timeout_ms)
        raise
    install_everywhere(config, [steady(c, new_epoch, new) for c in clusters], lock_timeout_ms)
    store.activate(new_epoch)
    return {"from_epoch": old_epoch, "to_epoch": new_epoch, "clusters": clusters}
