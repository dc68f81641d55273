"""Concurrency and operator faults under the two-table transfer load: two coordinators
racing for one migration, an overlapping migration started and aborted beside a live
one, the replication slot dropped underneath, and a schema change while the applier
is behind. After each, the migration is cut over (or cleanly restarted first) and the
audit finds every acknowledged write on its owner."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import yaml

from reshard.exit_codes import ExitCode
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import forward
from reshard.maps.shardmap import parse_map
from tests.chaos.harness import AFTER, Fault, LedgerLoad, audit, finish, setup
from tests.e2e.helpers import ApplierThread, assert_verified, reshard_cmd, spawn, wait_for, write_config_file


def _cli(cfg, *args: str) -> subprocess.Popen:
    return subprocess.Popen(reshard_cmd(cfg, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.long  # 70 s; test_ownership's one-switch-at-a-time test stays in `make test`
def test_two_coordinators_racing_never_both_switch(env, tmp_path):
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    outcomes = []
    f = Fault("two coordinators racing, 3 rounds", "cutover and rollback")
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        load = LedgerLoad(env.config, threads=2, rate=100, seed=11).start()
        try:
            for _round in range(3):
                for kind in ("cutover", "rollback"):
                    args = [kind, name, "--max-write-pause", "5", "--json"]
                    if kind == "cutover":
                        args.append("--skip-verify-gate")
                    procs = [_cli(cfg, *args) for _ in range(2)]  # started together
                    results = [(p.wait(timeout=180), p.communicate()) for p in procs]
                    codes = sorted(code for code, _out in results)
                    switched = [json.loads(out) for code, (out, _err) in results
                                if code == 0 and json.loads(out).get("epoch")]
                    outcomes.append((kind, codes))
                    # exactly one switched; the other was refused while it ran (busy) or came
                    # after it and found nothing left to do
                    assert len(switched) == 1, (kind, results)
                    assert codes[1] in (ExitCode.OK, ExitCode.BUSY, ExitCode.BAD_INPUT), (kind, results)
                    assert co.store.migration(name).state == ("baking" if kind == "cutover" else "rolled_back")
        finally:
            stats = load.stop()
        co.wait(name, timeout=90)
        assert_verified(co.verify(name))
    busy = sum(1 for _k, codes in outcomes if ExitCode.BUSY in codes)
    f.survived(stats, audit(env, co, load), note=f"{busy} of {len(outcomes)} races met a held lease (exit 7)")


def test_an_overlapping_migration_started_and_aborted_beside_a_live_one(env, tmp_path):
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    other = f"{name}o"
    overlap = tmp_path / "all-to-target2.yaml"
    overlap.write_text(yaml.safe_dump({"name": "all-to-target2", "groups": {"accounts": {
        **AFTER["groups"]["accounts"], "hash": {"buckets": 4096, "clusters": {"target2": "0-4095"}}}}}))
    f = Fault("overlapping migration started, then aborted", "streaming")
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        load = LedgerLoad(env.config, threads=2, rate=100, seed=12).start()
        try:
            start = subprocess.run(reshard_cmd(cfg, "start", other, "--to", str(overlap)), capture_output=True,
                                   text=True, timeout=120)
            assert start.returncode == ExitCode.BAD_INPUT and "already moves" in start.stderr, start
            abort = subprocess.run(reshard_cmd(cfg, "abort", other, "--yes"), capture_output=True, text=True,
                                   timeout=120)
            assert abort.returncode == ExitCode.BAD_INPUT and "no migration named" in abort.stderr, abort
            time.sleep(2.0)
            stats = finish(env, co, name, load)  # the live migration lost nothing
        finally:
            stats = load.stop()
    f.survived(stats, audit(env, co, load), note="refused with exit 3 before anything was created")


def test_a_slot_dropped_underneath_stops_the_migration_and_a_fresh_one_succeeds(env, tmp_path):
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    stream = forward(name, "source1")
    f = Fault("replication slot dropped underneath", "streaming")
    load = LedgerLoad(env.config, threads=2, rate=100, seed=13).start()
    try:
        with ApplierThread(co, name):
            co.wait(name, timeout=60)
            ConnectClient(env.config.connect).delete(stream.connector)  # releases the slot...
            with env.conn("source1") as conn:
                wait_for(lambda: not conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                                  (stream.slot,)).fetchone()[0], 30, "the slot to be released")
                conn.execute("SELECT pg_drop_replication_slot(%s)", (stream.slot,))  # ...and someone drops it
            wait = subprocess.run(reshard_cmd(cfg, "wait", name, "--timeout", "20"), capture_output=True, text=True,
                                  timeout=120)
            assert wait.returncode == ExitCode.STREAM_LOST, wait
            assert f"(slot {stream.slot}) lost its position (the slot is not on the primary" in wait.stderr, wait
            cut = subprocess.run(reshard_cmd(cfg, "cutover", name, "--skip-verify-gate"), capture_output=True,
                                 text=True, timeout=120)
            assert cut.returncode == ExitCode.STREAM_LOST and "lost its slot" in cut.stderr + cut.stdout, cut
        # the stream has a hole: the way out is to abort (the sources own every key) and start again
        abort = subprocess.run(reshard_cmd(cfg, "abort", name, "--yes"), capture_output=True, text=True, timeout=180)
        assert abort.returncode == 0, abort
        again = f"{name}2"
        co.create(again, parse_map(AFTER, env.config.clusters))
        co.start(again)
        with ApplierThread(co, again):
            finish(env, co, again, load)
    finally:
        stats = load.stop()
    f.survived(stats, audit(env, co, load), note="wait and cutover refused (exit 16); aborted, restarted, cut over")


def test_a_column_added_while_the_applier_is_behind(env, tmp_path):
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    f = Fault("ADD COLUMN on the source with a backlog", "streaming, applier stopped")
    load = LedgerLoad(env.config, threads=2, rate=100, seed=14).start()
    try:
        time.sleep(3.0)  # a backlog without the column
        with env.conn("source1") as conn:
            conn.execute("ALTER TABLE public.ledger ADD COLUMN memo text")
        time.sleep(3.0)  # and events with it
        applier = spawn(cfg, tmp_path / "apply.log", "apply", name)
        try:
            finish(env, co, name, load)
        finally:
            applier.send_signal(signal.SIGTERM)
            applier.wait(timeout=60)
        assert applier.returncode == 0, (tmp_path / "apply.log").read_text()
        for t in ("target1", "target2"):  # the applier placed the captured change itself
            with env.conn(t) as conn:
                assert conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'ledger' "
                                    "AND column_name = 'memo'").fetchone()
    finally:
        stats = load.stop()
    f.survived(stats, audit(env, co, load), note="the applier added the column to the targets itself")
