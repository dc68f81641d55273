"""One owner per decision (invariant 8): overlapping migrations are refused before
anything exists, teardown removes only what its own migration wrote, and concurrent
commands on one migration cannot both act."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from reshard.coordinator import Coordinator
from reshard.cutover.orchestrator import FAILPOINT_ENV, FAILPOINT_SLEEP_ENV
from reshard.errors import MigrationError, SetupError
from reshard.kafka.connect_client import ConnectClient
from reshard.maps.shardmap import parse_map
from reshard.stack.demo import DEFAULT_BUCKETS, demo_maps
from tests.e2e.cutover_helpers import acceptors, moving_keys, setup
from tests.e2e.helpers import (
    TARGETS,
    ApplierThread,
    assert_targets_equal_source,
    assert_verified,
    prepare,
    reshard_cmd,
    wait_for,
    write_config_file,
)


def _slots(env, name: str) -> list[str]:
    with env.conn("source1") as conn:
        return [r[0] for r in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s", (f"reshard_{name}%",))]


def _target_rows(env) -> dict[str, int]:
    out = {}
    for t in TARGETS:
        with env.conn(t) as conn:
            out[t] = conn.execute("SELECT count(*) FROM public.accounts").fetchone()[0]
    return out


def test_overlapping_migration_is_refused_before_anything_is_created(env):
    first, second = env.migration("a"), env.migration("b")
    co = prepare(env, rows=3_000, migration=first)
    co.start(first)
    with ApplierThread(co, first):
        co.wait(first, timeout=60)
    before_rows = _target_rows(env)
    assert sum(before_rows.values()) == 3_000

    # the same keys, all to target2: half of them are already moving to target1
    overlapping = {"name": "all-to-target2", "groups": {"accounts": {
        "key": "bigint", "tables": {"public.accounts": "id"},
        "hash": {"buckets": DEFAULT_BUCKETS, "clusters": {"target2": f"0-{DEFAULT_BUCKETS - 1}"}}}}}
    with pytest.raises(MigrationError, match=f"already moves: group accounts: both move buckets .*{first}|"
                                             f"migration {first} .*already moves"):
        co.create(second, parse_map(overlapping, env.config.clusters))
    assert second not in [m["name"] for m in co.store.migrations()]
    assert _slots(env, second) == []
    assert not [c for c in ConnectClient(env.config.connect).connectors() if c.startswith(f"reshard-{second}")]
    # the sequence that lost data: abort of the refused migration
    with pytest.raises(MigrationError, match="no migration named"):
        co.teardown(second)
    assert _target_rows(env) == before_rows
    with ApplierThread(co, first):
        co.wait(first, timeout=60)
        assert_verified(co.verify(first))
    assert_targets_equal_source(env)


def test_abort_deletes_only_the_rows_its_migration_wrote(env):
    name = env.migration()
    co = prepare(env, rows=2_000, migration=name)
    # rows already on target1 in the moving range, written by someone else
    with env.conn("source1") as src, env.conn("target1") as t1:
        keys = [r[0] for r in src.execute("SELECT id FROM public.accounts ORDER BY id").fetchall()]
        rec, p = co.record(name)
        move = next(m for m in p.moves if m.target == "target1")
        theirs = [r[0] for r in src.execute(
            f"SELECT id FROM public.accounts t WHERE {p.predicate_sql(move, 'public.accounts', 't').as_string(None)} "
            "ORDER BY id LIMIT 5").fetchall()]
        for k in theirs:
            t1.execute("INSERT INTO public.accounts (id, owner, balance) VALUES (%s, 'someone else', 1)", (k,))
    with pytest.raises(SetupError, match="already holds rows"):
        co.start(name)
    done = co.teardown(name)
    assert any("deleted 0 row(s) of public.accounts on target1" in d for d in done), done
    with env.conn("target1") as t1:
        kept = [r[0] for r in t1.execute("SELECT id FROM public.accounts WHERE owner = 'someone else' ORDER BY id")]
    assert kept == sorted(theirs)
    assert _slots(env, name) == []
    assert len(keys) == 2_000


def test_abort_after_copy_and_stream_removes_the_copied_and_applied_rows(env):
    name = env.migration()
    co = prepare(env, rows=2_000, migration=name)
    co.start(name)
    with env.conn("source1") as src:
        src.execute("INSERT INTO public.accounts (id, owner, balance) SELECT g, 'late', 0 "
                    "FROM generate_series(100001, 100200) g")
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
    assert sum(_target_rows(env).values()) == 2_200
    co.teardown(name)
    assert _target_rows(env) == {t: 0 for t in TARGETS}


def _copied_rows(env, name) -> int:
    """Rows the committed batches of the copy wrote, from the cursors on the targets."""
    total = 0
    for t in TARGETS:
        with env.conn(t) as conn:
            if conn.execute("SELECT to_regclass('reshard.copy_cursor')").fetchone()[0]:
                total += conn.execute("SELECT coalesce(sum(rows_copied), 0) FROM reshard.copy_cursor "
                                      "WHERE migration = %s", (name,)).fetchone()[0]
    return total


def test_abort_of_a_copy_killed_mid_chunk_deletes_only_the_batches_it_committed(env, tmp_path):
    """Chunked copy (3 sessions per unit), SIGKILLed part-way: abort deletes the rows the
    committed batches wrote and keeps rows someone else put in ranges not yet copied."""
    name = env.migration()
    co = prepare(env, rows=60_000, migration=name)
    cfg = write_config_file(env, tmp_path)
    after = tmp_path / "after.yaml"
    after.write_text(json.dumps(demo_maps(TARGETS)[1]))
    proc = subprocess.Popen(reshard_cmd(cfg, "start", name, "--to", str(after), "--batch-rows", "2000",
                                        "--copy-workers", "3", "--max-rows-per-second", "3000"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _copied_rows(env, name) >= 4_000, 120, "a few batches to commit")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    rec, p = co.record(name)
    theirs: dict[str, list[int]] = {}
    for move in p.moves:  # keys beyond every source key, in each move's range: no chunk reached them
        with env.conn(move.target) as conn:
            theirs[move.target] = [r[0] for r in conn.execute(
                f"SELECT t.id FROM (SELECT g AS id FROM generate_series(900001, 900400) g) t "
                f"WHERE {p.predicate_sql(move, 'public.accounts', 't').as_string(None)} ORDER BY t.id LIMIT 3")]
            for k in theirs[move.target]:
                conn.execute("INSERT INTO public.accounts (id, owner, balance) VALUES (%s, 'someone else', 1)", (k,))
    with env.conn("target1") as c1:
        chunks = c1.execute("SELECT count(*), bool_or(done) FROM reshard.copy_cursor WHERE migration = %s",
                            (name,)).fetchone()
    assert chunks[0] == 3 and not chunks[1], chunks  # killed part-way through target1's three chunks
    co.teardown(name)
    for target in TARGETS:
        with env.conn(target) as conn:
            left = [r[0] for r in conn.execute("SELECT id FROM public.accounts ORDER BY id")]
        assert left == sorted(theirs[target]), (target, left[:10], len(left))


def test_concurrent_create_of_one_name_gives_one_migration(env):
    name = env.migration()
    co = Coordinator.open(env.config)
    before, after = demo_maps(TARGETS)
    results: list = []

    def create() -> None:
        try:
            results.append(co.create(name, parse_map(after, env.config.clusters),
                                     parse_map(before, env.config.clusters)))
        except BaseException as exc:  # collected for the assertion below
            results.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(r, BaseException) for r in results), results
    assert {(r.name, r.from_epoch, r.to_epoch) for r in results} == {(results[0].name, results[0].from_epoch,
                                                                      results[0].to_epoch)}
    assert [m["name"] for m in co.store.migrations()] == [name]


def test_a_second_cutover_or_rollback_is_refused_while_one_runs_and_a_late_waker_backs_out(env, tmp_path):
    co, name = setup(env, rows=2_000, audit=False)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        log = tmp_path / "stalled.log"
        # the first cutover stalls after its first flip, for longer than its write-pause budget
        stalled = subprocess.Popen(reshard_cmd(cfg, "cutover", name, "--max-write-pause", "2", "--json"),
                                   stdout=subprocess.PIPE, stderr=open(log, "wb"),
                                   env={**os.environ, FAILPOINT_ENV: "flip_to:before", FAILPOINT_SLEEP_ENV: "6"})
        wait_for(lambda: b"failpoint" in log.read_bytes() or stalled.poll() is not None, 60, "the stall")
        assert stalled.poll() is None, log.read_text()
        for command in ("cutover", "rollback", "abort", "complete"):
            second = subprocess.run(reshard_cmd(cfg, command, name, "--yes") if command in ("abort", "complete")
                                    else reshard_cmd(cfg, command, name), capture_output=True, text=True, timeout=60)
            assert second.returncode == 7, (command, second.stdout, second.stderr)
            assert "holds its lease" in second.stderr, second.stderr
        out, _ = stalled.communicate(timeout=60)
        doc = json.loads(out)
        # it woke past its budget: it must not flip or activate late, and says so
        assert stalled.returncode == 12, (doc, log.read_text())
        assert doc["outcome"] == "aborted" and "budget" in doc["message"], doc
        for k in moving_keys(6):
            assert acceptors(env, k) == ["source1"], k
        again = subprocess.run(reshard_cmd(cfg, "cutover", name, "--json"), capture_output=True, text=True,
                               timeout=120)
        assert again.returncode == 0, (again.stdout, again.stderr)
        assert json.loads(again.stdout)["outcome"] == "done"
        recorded = [a for a in co.store.attempts(name) if a["kind"] == "cutover"]
        assert [a["state"] for a in recorded] == ["aborted", "done"], recorded

        # complete waits its turn behind a rollback too (it used to take no lease from the CLI)
        log = tmp_path / "rollback.log"
        rolling = subprocess.Popen(reshard_cmd(cfg, "rollback", name, "--json"), stdout=subprocess.PIPE,
                                   stderr=open(log, "wb"),
                                   env={**os.environ, FAILPOINT_ENV: "drain:before", FAILPOINT_SLEEP_ENV: "4"})
        wait_for(lambda: b"failpoint" in log.read_bytes() or rolling.poll() is not None, 60, "the rollback's stall")
        assert rolling.poll() is None, log.read_text()
        refused = subprocess.run(reshard_cmd(cfg, "complete", name, "--yes"), capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 7 and "holds its lease" in refused.stderr, (refused.stdout, refused.stderr)
        rolling.communicate(timeout=120)
        assert not [a for a in co.store.attempts(name) if a["kind"] == "complete"]
        assert co.store.migration(name).state != "complete"
