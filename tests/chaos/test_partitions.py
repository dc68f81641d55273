"""Network partitions, not process kills: source1 and target1 each serve from a network
namespace of the test's own (tests/chaos/netns.py), and the test cuts the path to one of
them (packets dropped without an answer) while the migration streams and at points of a
cutover, under the two-table transfer load through the router and a probe that writes
straight to both owners of a few moving keys.

Expected, whatever the point: no key is accepted by two clusters (the audit and the
probe's owner changes), nothing acknowledged is lost, a cut inside the write pause costs no
more than the budget (the fence's own deadline), and the migration goes on by itself once
the path heals, or stops in a state its exit code names (12: routing unchanged; 15: past
the point of no return, the same command finishes it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from reshard.cutover.orchestrator import Outcome, SwitchOptions, cutover
from reshard.exit_codes import ExitCode
from reshard.failpoints import FAILPOINT_ENV, FAILPOINT_SLEEP_ENV
from reshard.stack.process import is_running, spawn, stop
from tests.chaos.harness import DirectProbe, Fault, LedgerLoad, _stopped, acceptors, audit, moving_keys, setup, switch
from tests.chaos.netns import IsolatedPostgres, Link
from tests.conftest import _env
from tests.e2e.helpers import ApplierThread, applied_count, assert_verified, reshard_cmd, wait_for, write_config_file

BUDGET = 2.0
SLACK = 1.5  # as in test_switch_stalls: the fence lapses at its deadline; a loaded 2-core machine adds delay


@pytest.fixture
def cut_env(stack, tmp_path):
    """source1 and target1 behind links the test can cut; target2 the session stack's."""
    links = {c: Link(c[0] + c[-1]).up() for c in ("source1", "target1")}
    servers = {c: IsolatedPostgres(f"{c}-ns", tmp_path, link) for c, link in links.items()}
    try:
        for s in servers.values():
            s.start()
        dsns = {c: s.dsn() for c, s in servers.items()}
        dsns["target2"] = stack.config().cluster("target2").dsn
        for env in _env(stack.config(), dsns):
            yield env, links
            for link in links.values():  # the cleanup reaches every cluster
                if link.is_cut:
                    link.heal()
    finally:
        for s in servers.values():
            s.stop()
        for link in links.values():
            link.close()


def _cut_for(link: Link, seconds: float) -> threading.Thread:
    link.cut()
    t = threading.Timer(seconds, link.heal)
    t.start()
    return t


def test_a_target_cut_off_while_streaming_catches_up_when_the_path_heals(cut_env, tmp_path):
    env, links = cut_env
    co, name = setup(env)
    co.start(name)
    f = Fault("path to a target cut 20s", "streaming")
    load = LedgerLoad(env.config, threads=2, rate=100, seed=31).start()
    try:
        with ApplierThread(co, name) as applier:
            co.wait(name, timeout=90)
            healer = _cut_for(links["target1"], 20.0)
            time.sleep(5)
            assert applier.thread.is_alive(), applier.result
            healer.join()
            co.wait(name, timeout=180)  # the applier rode the partition out: no restart
            assert_verified(co.verify(name))
            assert applier.thread.is_alive(), applier.result
            switch("cutover", env, co, name)
            time.sleep(1.0)
            stats = load.stop()
            co.wait(name, timeout=90)
    finally:
        load.stop()
    f.survived(stats, audit(env, co, load), note="the applier rode it out; caught up, EQUAL, cut over")


# (cluster cut, failpoint where the cut begins, how long it lasts, exit codes allowed)
CASES = [
    # inside the pause: a drain that needs the cut target cannot finish (12); one whose changes all
    # reached it already finishes, and the target's flip is retried until the path heals (0)
    ("target1", "drain:before", 8.0, {ExitCode.CUTOVER_ABORTED, ExitCode.OK}),
    # the sources refuse the keys already: the target's flip is retried until the path heals (the
    # keys have no owner meanwhile, as after a freeze there: test_switch_stalls.py), or backed out
    ("target1", "flip_to:before", 8.0, {ExitCode.OK, ExitCode.CUTOVER_ABORTED, ExitCode.SWITCH_INCOMPLETE}),
    ("source1", "flip_from:before", 8.0, {ExitCode.CUTOVER_ABORTED}),  # the old owner, its fence held
    ("target1", "after_flip:before", 8.0, {ExitCode.OK, ExitCode.SWITCH_INCOMPLETE}),  # past the point of no return
]


def test_a_cutover_cut_off_from_an_owner_at_each_point_never_splits_a_key(cut_env, tmp_path):
    env, links = cut_env
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    keys = moving_keys(4, start=100_000)  # beyond the transfers' keyspace: only the probe writes them
    f = Fault(f"path to an owner cut at {len(CASES)} cutover points", "cutover")
    outcomes = []
    with ApplierThread(co, name):
        co.wait(name, timeout=90)
        assert_verified(co.verify(name))
        load = LedgerLoad(env.config, threads=2, rate=100, seed=32).start()
        probe = DirectProbe(env, keys, every=0.01).start()
        switches = 0
        try:
            for cluster, point, seconds, allowed in CASES:
                log = tmp_path / f"cutover-{point.replace(':', '_')}.log"
                proc = subprocess.Popen(
                    reshard_cmd(cfg, "cutover", name, "--json", "--max-write-pause", str(BUDGET), "--skip-verify-gate"),
                    stdout=subprocess.PIPE, stderr=open(log, "wb"),
                    env={**os.environ, FAILPOINT_ENV: point, FAILPOINT_SLEEP_ENV: "stop"})
                wait_for(lambda: b"failpoint" in log.read_bytes() or proc.poll() is not None, 120, point)  # noqa: B023
                assert proc.poll() is None, (point, log.read_text())
                # it froze itself at the point (SIGSTOP): the path is cut before it goes on, however
                # slowly this test runs
                wait_for(lambda: _stopped(proc.pid), 10, "the cutover to stop itself")  # noqa: B023
                cut_at = time.monotonic()
                healer = _cut_for(links[cluster], seconds)
                os.kill(proc.pid, signal.SIGCONT)
                out, _ = proc.communicate(timeout=300)
                ended = time.monotonic()
                healer.join()
                code = proc.returncode
                assert code in allowed, (cluster, point, code, out[-2000:], log.read_text()[-3000:])
                if code == ExitCode.SWITCH_INCOMPLETE:  # the same command finishes it forward
                    again = subprocess.run(reshard_cmd(cfg, "cutover", name, "--json", "--skip-verify-gate"),
                                           capture_output=True, text=True, timeout=300)
                    assert again.returncode == ExitCode.OK, (point, again.stdout[-2000:], again.stderr[-2000:])
                    code = ExitCode.OK
                if code == ExitCode.OK:
                    switches += 1
                # the exit code says what the shards hold
                moved = code == ExitCode.OK
                for k, pair in probe.pairs.items():
                    owner = pair[1] if moved else pair[0]
                    wait_for(lambda k=k, owner=owner: acceptors(env, k) == [owner], 30,
                             f"{point}: key {k} accepted by {owner} alone")
                gap = probe.longest_gap(cut_at - 1.5, ended)
                # the old owner's pause: bounded by the budget inside the pause before the sources' flip
                # (the target cut off there cannot hold the sources' writes back any longer)
                old_gap = probe.longest_gap(cut_at - 1.5, cut_at + seconds, on="source1")
                outcomes.append((cluster, point, int(code), round(ended - cut_at, 1), round(gap, 2), round(old_gap, 2)))
                if point == "drain:before" and code == ExitCode.CUTOVER_ABORTED:  # backed out: the budget held
                    assert old_gap <= BUDGET + SLACK, (point, old_gap)
                probe.pause()
                co.wait(name, timeout=180)
                assert probe.lost(co) == {}, (point, code, "lost: key -> (acknowledged, applied)")
                probe.resume()
                if moved:
                    switch("rollback", env, co, name)
                    switches += 1
                time.sleep(0.5)
        finally:
            probe.stop()
            stats = load.stop()
        co.wait(name, timeout=120)
        assert_verified(co.verify(name))
    print("\n" + "\n".join(f"cut {c:<8} at {p:<18} exit {code:<3} after {s:>5.1f}s  longest gap {g:>5.2f}s, on the "
                           f"old owner {o:>5.2f}s" for c, p, code, s, g, o in outcomes))
    assert not [e for e in probe.errors if "timeout" not in e and "connection" not in e.lower()], probe.errors[:5]
    assert probe.lost(co) == {}
    changes = probe.owner_changes()
    assert all(n <= switches for n in changes.values()), (changes, switches)
    f.survived(stats, audit(env, co, load), note=f"exits {[o[2] for o in outcomes]}; no key owned twice, none lost")


def _port(address: str) -> int:
    return int(address.rstrip("/").rsplit(":", 1)[1].split("/")[0])


def test_the_applier_cut_off_from_kafka_rides_it_out(env, tmp_path):
    """The applier runs in a network namespace; relays give it the session stack at the usual
    addresses, and the test holds its path to Kafka alone for 20 s (its paths to the clusters,
    the control database and Connect stay)."""
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    c = env.config
    kafka = _port(c.kafka.bootstrap_servers.split(",")[0])
    ports = sorted({kafka, _port(c.connect.url), *([_port(c.kafka.schema_registry_url)] if c.kafka.schema_registry_url
                                                   else []),
                    *(int(psycopg.conninfo.conninfo_to_dict(d)["port"]) for d in
                      [c.control_dsn, *(cl.dsn for cl in c.clusters.values())])})
    control = tmp_path / "relay-control"
    control.mkdir()
    link = Link("ap").up()
    root = Path(__file__).resolve().parents[2]
    relay = [sys.executable, "-m", "tests.chaos.relay"]
    procs = []
    f = Fault("applier's path to Kafka cut 20s", "streaming")
    load = LedgerLoad(env.config, threads=2, rate=100, seed=33).start()
    try:
        procs.append(spawn([*relay, link.host_ip, "127.0.0.1", ",".join(map(str, ports)), str(control)],
                           tmp_path / "relay-host.log", cwd=root))
        procs.append(spawn(["ip", "netns", "exec", link.ns, *relay, "127.0.0.1", link.host_ip,
                            ",".join(map(str, ports)), str(control)], tmp_path / "relay-ns.log", cwd=root))
        for log in ("relay-host.log", "relay-ns.log"):
            wait_for(lambda log=log: b"relaying" in (tmp_path / log).read_bytes(), 30, log)
        applier_log = tmp_path / "applier.log"
        applier = spawn(["ip", "netns", "exec", link.ns, *reshard_cmd(cfg, "apply", name, "--kafka-outage", "120",
                                                                      "--metrics-port", "0")], applier_log, cwd=root)
        procs.append(applier)
        co.wait(name, timeout=120)
        (control / f"hold-{kafka}").touch()  # the applier's Kafka path goes silent
        time.sleep(8)  # what it had fetched before is applied by then
        held = applied_count(env, name)
        time.sleep(12)
        assert applied_count(env, name) == held, "the applier still reached Kafka"  # the cut holds
        assert is_running(applier), applier_log.read_text()[-3000:]
        (control / f"hold-{kafka}").unlink()
        co.wait(name, timeout=240)  # the same applier, never restarted, catches up
        assert is_running(applier), applier_log.read_text()[-3000:]
        assert_verified(co.verify(name))
        # the consumer group may still be settling after the healed path (a commit refused with
        # ILLEGAL_GENERATION): a cutover then backs out (12, nothing fenced for long, nothing lost)
        # and the next one goes through
        tries = []
        for _ in range(4):
            out = cutover(env.config, co.store, name, SwitchOptions(max_write_pause=5, require_verified=False))
            tries.append(out.outcome)
            if out.outcome == Outcome.DONE:
                break
            time.sleep(3)
        assert out.outcome == Outcome.DONE, (tries, out.message)
        time.sleep(1.0)
        stats = load.stop()
        co.wait(name, timeout=120)
    finally:
        load.stop()
        for rec in reversed(procs):
            stop(rec, signal.SIGINT)
        link.close()
    f.survived(stats, audit(env, co, load),
               note=f"the applier, in its own namespace, rode it out; EQUAL; cutover attempts {len(tries)}")
