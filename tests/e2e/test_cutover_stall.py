"""A cutover frozen past its point of no return finishes forward and loses nothing.

The scenario that lost acknowledged writes (issue 27): `reshard cutover` frozen whole
(SIGSTOP, as a paused VM freezes it) for 15 s right after the targets' flip, while a
probe writes `balance + 1` to moving keys every 5 ms straight to the source and to
each key's new owner. Before, the thawed process exited 12 ("routing is unchanged")
while the targets owned the keys, and its rerun moved ownership back, discarding what
the targets had acknowledged. Now it finishes forward (exit 0, the overrun said), and
every acknowledged write is on the owner.

The second case freezes it inside the targets' flip, holding a target table's lock:
the server ends that transaction after the hold limit, so writes on the target wait
at most about that long, not the 15 s of the freeze; on thawing it redoes the flip.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import DirectProbe, acceptors, moving_keys, setup, stalled_switch
from tests.e2e.helpers import ApplierThread, assert_verified, reshard_cmd, write_config_file

BUDGET = 2.0


@pytest.mark.parametrize("point, seconds", [("activate:before", 15), ("flip_to:locked", 10)])
def test_a_cutover_frozen_past_the_point_of_no_return_finishes_forward_and_loses_nothing(env, tmp_path, point,
                                                                                        seconds):
    co, name = setup(env, rows=2_000)
    cfg = write_config_file(env, tmp_path)
    co.start(name)
    keys = moving_keys(2)
    with ApplierThread(co, name):
        co.wait(name, timeout=60)
        assert_verified(co.verify(name))
        probe = DirectProbe(env, keys).start()
        try:
            code, doc, frozen, thawed = stalled_switch(
                reshard_cmd(cfg, "cutover", name, "--json", "--max-write-pause", str(BUDGET), "--skip-verify-gate",
                            "--wait-for-gates", "120"),
                tmp_path / "cutover.log", point, seconds)
            log = (tmp_path / "cutover.log").read_text()
            assert thawed - frozen >= seconds, log  # it did reach the point and stayed frozen
            # what it says is what the shards hold: done, the new epoch active, targets own
            assert code == 0, (doc, log)
            assert doc["outcome"] == "done" and "over the 2.00s budget" in doc["message"], doc
            assert co.store.active_epoch() == doc["epoch"]
            for k in keys:
                assert acceptors(env, k) == [probe.pairs[k][1]], k
        finally:
            probe.stop()
        co.wait(name, timeout=90)
    assert not probe.errors, probe.errors[:5]
    assert sum(len(a) for a in probe.acks.values()) > 100, probe.acks
    assert probe.lost(co) == {}, "acknowledged writes lost: key -> (acknowledged, applied)"
    # ownership moved once, from the source to the new owner, and never back
    assert all(n <= 1 for n in probe.owner_changes().values()), probe.owner_changes()
    if point == "flip_to:locked":
        # the frozen process's transaction ended on the server (hold limit): a target write
        # waited about that long, not the freeze
        assert max(probe.max_latency.values()) < 3.0, probe.max_latency
    else:
        # past the targets' flip, a writer that writes to the new owner is served at once
        assert probe.longest_gap(frozen, thawed) < BUDGET, probe.longest_gap(frozen, thawed)
    attempts = [a for a in co.store.attempts(name) if a["kind"] == "cutover"]
    assert [a["state"] for a in attempts] == ["done"], attempts
