"""The chaos suite's live load, its audit, and the table of faults survived.

The load is an application's: transfers through ``reshard.router`` that write two
sharded tables of one group in one transaction, half of them ``accounts`` first and
half ``ledger`` first (the lock orders that used to deadlock with the fence). Each
thread owns the keys k = i (mod threads), so the last acknowledged value of every
account and every acknowledged ledger entry are known exactly.

The audit after each fault: every acknowledged write is on its owner under the
active map (both tables), and every application write any shard accepted was to a
key that shard owned at the epoch it was at (a trigger records each one with
``reshard.shard_epoch()``), so no key was ever accepted by two clusters.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psycopg

from reshard.cluster import fence
from reshard.coordinator import Coordinator
from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover, rollback
from reshard.maps.shardmap import parse_map
from reshard.stack.workload import create_table, seed
from tests.e2e.cutover_helpers import LoadStats, RouterLoad
from tests.e2e.helpers import assert_verified

CLUSTERS = ("source1", "target1", "target2")
TABLES = {"public.accounts": "id", "public.ledger": "account_id"}
GROUP = {"key": "bigint", "tables": TABLES}
BEFORE = {"name": "before", "groups": {"accounts": {**GROUP, "hash": {"buckets": 4096, "clusters": {
    "source1": "0-4095"}}}}}
# source1 keeps a quarter of the keys; the rest moves to the two targets
AFTER = {"name": "after", "groups": {"accounts": {**GROUP, "hash": {"buckets": 4096, "clusters": {
    "source1": "0-1023", "target1": "1024-2559", "target2": "2560-4095"}}}}}

LEDGER = """
DROP TABLE IF EXISTS public.ledger;
CREATE TABLE public.ledger (account_id bigint NOT NULL, entry text NOT NULL, amount numeric(14,2) NOT NULL,
                            PRIMARY KEY (account_id, entry));
"""
AUDIT = """
CREATE TABLE IF NOT EXISTS public.app_writes (
    tbl text, id bigint, epoch bigint, at timestamptz DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION public.audit_app_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.app_writes (tbl, id, epoch)
  VALUES (TG_TABLE_NAME, (to_jsonb(NEW) ->> TG_ARGV[0])::bigint, reshard.shard_epoch());
  RETURN NEW;
END $$;
-- ordinary (ENABLE ORIGIN) triggers: reshard's copy and appliers run as replicas and skip
-- them, so app_writes holds exactly the application's writes and the epoch each shard was at
CREATE TRIGGER audit_app_write AFTER INSERT OR UPDATE ON public.accounts
    FOR EACH ROW EXECUTE FUNCTION public.audit_app_write('id');
CREATE TRIGGER audit_app_write AFTER INSERT OR UPDATE ON public.ledger
    FOR EACH ROW EXECUTE FUNCTION public.audit_app_write('account_id');
"""


def setup(env, rows: int = 4_000, name: str | None = None) -> tuple[Coordinator, str]:
    """Both tables on every cluster, seeded on source1, migration created, fences installed."""
    for c in CLUSTERS:
        with env.conn(c) as conn:
            create_table(conn)
            conn.execute(LEDGER)
    with env.conn("source1") as conn:
        seed(conn, rows)
        conn.execute("INSERT INTO public.ledger SELECT g, 'seed', 0 FROM generate_series(1, %s) g", (rows,))
    co = Coordinator.open(env.config)
    name = name or env.migration()
    co.create(name, parse_map(AFTER, env.config.clusters), parse_map(BEFORE, env.config.clusters))
    epoch, m = co.store.active()
    fence.fence_map(env.config, epoch, m)
    for c in CLUSTERS:  # after the seed, which is not the application's
        with env.conn(c) as conn:
            conn.execute(AUDIT)
    return co, name


class LedgerLoad(RouterLoad):
    """Transfers: each writes the account and a ledger entry in one transaction, in
    alternating lock orders; remembers the last owner value per account and every entry."""

    def __init__(self, config, threads: int = 4, rate: float = 200.0, keyspace: int = 6000, seed: int = 0):
        super().__init__(config, threads=threads, rate=rate, keyspace=keyspace, seed=seed, wait_switching=5.0,
                         max_seconds=300.0)
        self.entries: list[tuple[int, str]] = []  # every acknowledged ledger entry

    def write_one(self, router, k: int, v: str, n: int) -> None:
        account = ("INSERT INTO public.accounts (id, owner, balance) VALUES (%s, %s, 1) "
                   "ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, balance = accounts.balance + 1")
        entry = "INSERT INTO public.ledger (account_id, entry, amount) VALUES (%s, %s, 1)"
        first, second = (entry, account) if n % 2 else (account, entry)

        def transfer(conn: psycopg.Connection) -> None:
            conn.execute(first, (k, v))
            time.sleep(0.002)  # hold the first table's lock a moment, as a real transfer does
            conn.execute(second, (k, v))
        router.write("public.accounts", [k], transfer)

    def acked_one(self, k: int, v: str) -> None:
        self.acked[k] = v
        self.entries.append((k, v))


def audit(env, co: Coordinator, load: LedgerLoad) -> dict[str, int]:
    """Every acknowledged write on its owner; every accepted application write owned where
    and when it was accepted. Returns what was checked."""
    _epoch, m = co.store.active()
    keys = list(load.acked)
    got: dict[str, dict[int, str]] = {}
    entries: dict[str, set[tuple[int, str]]] = {}
    for c in CLUSTERS:
        with env.conn(c) as conn:
            got[c] = dict(conn.execute("SELECT id, owner FROM public.accounts WHERE id = ANY(%s)", (keys,)).fetchall())
            entries[c] = set(conn.execute("SELECT account_id, entry FROM public.ledger WHERE account_id = ANY(%s)",
                                          (keys,)).fetchall())
    # the owner holds the last acknowledged value, or a later write whose commit is in doubt
    # (the connection died as it committed: an immediate stop can commit and not answer)
    wrong = [(k, v, m.owner("public.accounts", [k])) for k, v in load.acked.items()
             if got[m.owner("public.accounts", [k])].get(k) not in {v, *load.in_doubt.get(k, ())}]
    assert not wrong, f"{len(wrong)} acknowledged account write(s) missing on their owner, e.g. {wrong[:5]}"
    lost = [e for e in load.entries if e not in entries[m.owner("public.ledger", [e[0]])]]
    assert not lost, f"{len(lost)} acknowledged ledger entries missing on their owner, e.g. {lost[:5]}"
    maps: dict[int, object] = {}
    accepted = 0
    for c in CLUSTERS:
        with env.conn(c) as conn:
            rows = conn.execute("SELECT tbl, id, epoch FROM public.app_writes").fetchall()
        for tbl, k, epoch in rows:
            if epoch not in maps:
                maps[epoch] = co.store.get_map(epoch)
            owner = maps[epoch].owner(f"public.{tbl}", [k])
            assert owner == c, f"{c} accepted a write to {tbl} key {k} at epoch {epoch}, owned by {owner}"
            accepted += 1
    return {"accounts": len(load.acked), "entries": len(load.entries), "accepted": accepted}


def acceptors(env, key: int) -> list[str]:
    """The clusters that would accept a transfer for ``key`` right now (probed in a
    transaction that is rolled back): at most one, whatever state a crash left."""
    out = []
    for c in CLUSTERS:
        with psycopg.connect(env.dsn(c)) as conn:
            conn.execute("SET lock_timeout = '5s'")
            try:
                conn.execute("INSERT INTO public.ledger (account_id, entry, amount) VALUES (%s, 'probe', 0)", (key,))
                out.append(c)
            except psycopg.Error as exc:
                assert exc.sqlstate in (fence.FENCED, fence.NOT_OWNER), exc
            conn.rollback()
    return out


def switch(kind: str, env, co: Coordinator, name: str) -> None:
    """A plain cutover or rollback (5 s budget), retried while Debezium did not confirm the
    drain in time (Connect rebalancing when reverse connectors come and go); never a
    switch that failed for any other reason."""
    fn = cutover if kind == "cutover" else rollback
    for _ in range(3):
        out = fn(env.config, co.store, name, SwitchOptions(max_write_pause=5, require_verified=False))
        if out.outcome == Outcome.DONE or "has not confirmed" not in out.message:
            break
    assert out.outcome == Outcome.DONE, out.message


def finish(env, co: Coordinator, name: str, load: LedgerLoad) -> LoadStats:
    """The end of a scenario: caught up and verified under the load, cut over, then the
    load stopped and the last of it (through the reverse streams too) caught up."""
    co.wait(name, timeout=120)
    assert_verified(co.verify(name))
    switch("cutover", env, co, name)
    time.sleep(1.0)
    stats = load.stop()
    co.wait(name, timeout=90)
    return stats


def moving_keys(n: int = 20, start: int = 1) -> list[int]:
    before, after = parse_map(BEFORE), parse_map(AFTER)
    return [k for k in range(start, start + 10_000) if before.owner("public.accounts", [k]) !=
            after.owner("public.accounts", [k])][:n]


# ---- the table of faults survived ----------------------------------------------------------
@dataclass
class Survived:
    fault: str
    during: str
    seconds: float
    transfers: int
    unacknowledged: int
    checked: str


REPORT: list[Survived] = []


class Fault:
    """Times one fault scenario and, if its audit passes, adds it to the report."""

    def __init__(self, fault: str, during: str):
        self.fault, self.during = fault, during
        self.started = time.monotonic()

    def survived(self, stats: LoadStats, checked: dict[str, int], note: str = "") -> None:
        unacked = stats.rejected + sum(stats.failed.values())
        what = (f"{checked['accounts']} accounts, {checked['entries']} entries on owner; "
                f"{checked['accepted']} accepted writes owned") + (f"; {note}" if note else "")
        REPORT.append(Survived(self.fault, self.during, round(time.monotonic() - self.started, 1),
                               stats.writes, unacked, what))


def report_lines() -> list[str]:
    if not REPORT:
        return []
    head = ("fault", "during", "s", "transfers", "unacked", "checked")
    rows = [(r.fault, r.during, f"{r.seconds:.0f}", str(r.transfers), str(r.unacknowledged), r.checked)
            for r in REPORT]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return [fmt.format(*head), *(fmt.format(*r) for r in rows)]


# ---- a probe that writes straight to the shards ----------------------------------------------
class DirectProbe:
    """For each key, two threads write ``balance + 1`` every few ms, one on the key's old
    owner and one on its new one, straight to the shards (no router: a writer with a stale
    map, or one that guesses), and record every acknowledged write: the cluster, when it
    was acknowledged and how long it took. Refusals (RS001/RS002) are not acknowledged.
    One thread per owner: a write that hangs on one (a cut network path) does not hold up
    the other's.

    What it proves after a stall or a kill: no acknowledged write is lost (the owner's
    balance grew by exactly the number of acknowledgements, once replication caught up);
    no key was owned twice (the acknowledging cluster changes at most once per switch);
    and how long writes to a key paused (the longest gap between acknowledgements)."""

    def __init__(self, env, keys: list[int], every: float = 0.005, max_seconds: float = 900.0):
        self.env, self.keys, self.every, self.max_seconds = env, keys, every, max_seconds
        before, after = parse_map(BEFORE), parse_map(AFTER)
        self.pairs = {k: (before.owner("public.accounts", [k]), after.owner("public.accounts", [k])) for k in keys}
        with env.conn("source1") as conn:
            # its own rows when its keys are beyond the seeded ones (no other load writes them);
            # call it while the source owns every key
            conn.execute("INSERT INTO public.accounts (id, owner, balance) SELECT k, 'probe', 0 "
                         "FROM unnest(%s::bigint[]) k ON CONFLICT (id) DO NOTHING", (keys,))
            self.initial = dict(conn.execute("SELECT id, balance FROM public.accounts WHERE id = ANY(%s)",
                                             (keys,)).fetchall())
        self.acks: dict[int, list[tuple[str, float]]] = {k: [] for k in keys}
        self.max_latency: dict[str, float] = {}  # cluster -> the longest single write (acknowledged or not), s
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._lock = threading.Lock()
        self._idle = {(k, c): threading.Event() for k in keys for c in self.pairs[k]}
        self._threads = [threading.Thread(target=self._run, args=(k, c), daemon=True) for k, c in self._idle]

    def start(self) -> DirectProbe:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self, k: int, c: str) -> None:
        conns: dict[str, psycopg.Connection] = {}
        ends = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < ends:
                if not self._running.is_set():
                    self._idle[(k, c)].set()
                    self._running.wait(1.0)
                    continue
                self._idle[(k, c)].clear()
                self._write(conns, c, k)
                time.sleep(self.every * 2)  # each owner as often as when one thread alternated
        finally:
            for conn in conns.values():
                conn.close()

    def _write(self, conns: dict[str, psycopg.Connection], c: str, k: int) -> None:
        t = time.monotonic()
        try:
            if c not in conns or conns[c].closed:
                conns[c] = psycopg.connect(self.env.dsn(c), autocommit=True, connect_timeout=5)
                conns[c].execute("SET statement_timeout = '60s'")
            cur = conns[c].execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = %s", (k,))
            if cur.rowcount == 1:  # 0: the row has not reached this cluster yet (no trigger ran, nothing written)
                with self._lock:
                    self.acks[k].append((c, time.monotonic()))
        except psycopg.Error as exc:
            if exc.sqlstate not in (fence.FENCED, fence.NOT_OWNER):
                self.errors.append(f"{c} key {k}: {exc.sqlstate} {str(exc).strip()[:200]}")
                conns.pop(c, None)
        finally:
            with self._lock:
                self.max_latency[c] = max(self.max_latency.get(c, 0.0), time.monotonic() - t)

    def pause(self) -> None:
        """Stop writing, once the writes in flight are answered."""
        for e in self._idle.values():
            e.clear()
        self._running.clear()
        for k, e in self._idle.items():
            assert e.wait(120), f"the probe of key {k} did not pause"

    def resume(self) -> None:
        self._running.set()

    # ---- what it proves --------------------------------------------------------------------
    def lost(self, co: Coordinator) -> dict[int, tuple[int, int]]:
        """Keys whose owner's balance is not the initial one plus every acknowledged write:
        key -> (acknowledged, applied). Call after the load stopped and replication caught up."""
        _epoch, m = co.store.active()
        out = {}
        for k in self.keys:
            with self.env.conn(m.owner("public.accounts", [k])) as conn:
                balance = conn.execute("SELECT balance FROM public.accounts WHERE id = %s", (k,)).fetchone()[0]
            if balance - self.initial[k] != len(self.acks[k]):
                out[k] = (len(self.acks[k]), int(balance - self.initial[k]))
        return out

    def owner_changes(self, since: float = 0.0) -> dict[int, int]:
        """Per key: how often the acknowledging cluster changed, in acknowledgement order."""
        out = {}
        for k, acks in self.acks.items():
            seq = [c for c, at in sorted(acks, key=lambda a: a[1]) if at >= since]
            out[k] = sum(1 for a, b in zip(seq, seq[1:]) if a != b)
        return out

    def longest_gap(self, since: float, until: float, on: str | None = None) -> float:
        """The longest time any key went without an acknowledged write between two moments
        (on cluster ``on`` only, if given), s."""
        worst = 0.0
        for acks in self.acks.values():
            times = [since] + sorted(at for c, at in acks if since <= at <= until and on in (None, c)) + [until]
            worst = max(worst, max(b - a for a, b in zip(times, times[1:])))
        return worst


def stalled_switch(cmd: list[str], log, point: str, seconds: float) -> tuple[int, dict | None, float, float]:
    """Run a switch command that freezes itself whole (SIGSTOP) at ``point``, leave it
    frozen ``seconds``, thaw it (SIGCONT) and let it finish. Returns its exit code, its
    --json document, and when the freeze began and ended (monotonic). A command that
    ends before reaching the point is returned as it ended (freeze times equal)."""
    import json
    import os
    import signal
    import subprocess

    from reshard.failpoints import FAILPOINT_ENV, FAILPOINT_SLEEP_ENV
    from tests.e2e.helpers import wait_for

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "wb"),
                            env={**os.environ, FAILPOINT_ENV: point, FAILPOINT_SLEEP_ENV: "stop"})
    wait_for(lambda: b"failpoint" in log.read_bytes() or proc.poll() is not None, 180, f"the switch to reach {point}")
    frozen = time.monotonic()
    if proc.poll() is None:
        wait_for(lambda: _stopped(proc.pid), 10, "the process to stop itself")
        time.sleep(seconds)
        os.kill(proc.pid, signal.SIGCONT)
    thawed = time.monotonic() if proc.poll() is None else frozen
    out, _ = proc.communicate(timeout=240)
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = None
    return proc.returncode, doc, frozen, thawed


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"
