"""SIGKILL the cutover at every step; the same command again settles it.

After each kill, and after the rerun: no key is accepted by two clusters, and once
the load stops every acknowledged write is on its owner. The rerun ends cut over
(finishing an attempt past its point of no return, or backing one out and cutting
over afresh); a rollback then resets the stage for the next step.
"""

import json
import os
import signal
import subprocess


from cutover.orchestrator import FAILPOINT_ENV, SwitchOptions, rollback
from tests.e2e.cutover_helpers import (
    RouterLoad, acceptors, assert_acked_on_owners, assert_no_stale_writes, moving_keys, setup,
)
from tests.e2e.helpers import assert_verified, ApplierThread, reshard_cmd, wait_for, write_config_file

POINTS = [f"{s}:before" for s in ("prepare", "register_map", "fence", "drain_position", "drain", "sequences",
                                   "flip_from", "flip_to", "activate", "after_flip")] + ["activate:after"]


def test_sigkill_at_each_step_then_rerun_ends_cut_over_or_cleanly_not(env, tmp_path):
    co, name = setup(env)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    probe = moving_keys(6)
    outcomes = []
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        load = RouterLoad(env.config, threads=2, rate=150, seed=5).start()
        try:
            for point in POINTS:
                log = tmp_path / f"{point.replace(':', '_')}.log"
                proc = subprocess.Popen(reshard_cmd(cfg, "cutover", name, "--max-write-pause", "3",
                                                    "--skip-verify-gate"),
                                        stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                        env={**os.environ, FAILPOINT_ENV: point})
                wait_for(lambda: b"failpoint" in log.read_bytes() or proc.poll() is not None, 60,
                         f"the cutover to reach {point}")
                assert proc.poll() is None, log.read_text()
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                for k in probe:  # never both sides writable, even with the process dead mid-step
                    assert len(acceptors(env, k)) <= 1, (point, k)
                rerun = subprocess.run(reshard_cmd(cfg, "cutover", name, "--skip-verify-gate", "--json"), capture_output=True,
                                       text=True, timeout=120)
                assert rerun.returncode == 0, (point, rerun.stdout, rerun.stderr)
                doc = json.loads(rerun.stdout)
                outcomes.append((point, doc["outcome"], doc["recovered"]))
                for k in probe:
                    assert len(acceptors(env, k)) == 1, (point, k)
                back = rollback(env.config, co.store, name, SwitchOptions(max_write_pause=3))
                assert back.outcome == "done", (point, back.message)
        finally:
            stats = load.stop()
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
    assert stats.rejected == 0 and stats.writes > 500
    assert assert_acked_on_owners(env, load.acked, co) > 100
    assert assert_no_stale_writes(env, co) > 100
    recovered = {p: r for p, _o, r in outcomes}
    assert any("finished it" in " ".join(r) for r in recovered.values()), outcomes  # a kill after activation
    assert any("backed it out" in " ".join(r) for r in recovered.values()), outcomes  # a kill before it
    print("\n".join(f"{p:<22} -> {o}; {'; '.join(r) or 'nothing to recover'}" for p, o, r in outcomes))
