"""Kill the snapshot copy at an awkward moment; the rerun continues, it does not restart."""

import json
import os
import signal
import subprocess
import time

import psycopg
import pytest
import yaml

from reshard.stack.demo import demo_maps
from reshard.stack.workload import Workload
from tests.e2e.helpers import (
    ApplierThread,
    assert_targets_equal_source,
    at_failpoint,
    prepare,
    reshard_cmd,
    spawn,
    write_config_file,
)


def _copied(env, name) -> int:
    """Rows the copy committed on the targets (each chunk's cursor: the durable fact)."""
    total = 0
    for target in ("target1", "target2"):
        with psycopg.connect(env.dsn(target)) as conn:
            total += conn.execute("SELECT coalesce(sum(rows_copied), 0) FROM reshard.copy_cursor WHERE migration = %s",
                                  (name,)).fetchone()[0]
    return int(total)


def _chunks(env, name) -> dict[str, int]:
    """Chunk rows per (target, move) recorded on the targets."""
    out = {}
    for target in ("target1", "target2"):
        with psycopg.connect(env.dsn(target)) as conn:
            for move, n in conn.execute("SELECT move_id, count(*) FROM reshard.copy_cursor WHERE migration = %s "
                                        "GROUP BY move_id", (name,)).fetchall():
                out[f"{target} {move}"] = n
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_sigkill_during_copy_then_rerun_resumes_and_ends_equal(env, tmp_path, workers):
    """With one worker each unit is one chunk; with three, each unit is split into three
    key-range chunks copied by sessions of their own, killed mid-way and resumed."""
    name = env.migration()
    co = prepare(env, rows=120_000, migration=name)
    cfg = write_config_file(env, tmp_path)
    load = Workload(env.dsn("source1"), rate=300, max_seconds=180, seed=4)
    load.start()
    try:
        maps = tmp_path / "maps"
        maps.mkdir()
        _before, after = demo_maps(["target1", "target2"])
        (maps / "after.yaml").write_text(yaml.safe_dump(after))
        args = ("start", name, "--to", str(maps / "after.yaml"), "--batch-rows", "2000", "--copy-workers", str(workers))
        # stalled once ten batches (20,000 rows) committed, then killed there
        proc = spawn(cfg, tmp_path / "start1.log", *args, failpoint="copy_batch:committed#10")
        at_failpoint(proc, tmp_path / "start1.log", "copy_batch:committed#10")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        killed_at = _copied(env, name)
        assert 0 < killed_at < 120_000
        chunks = _chunks(env, name)
        assert sorted(chunks.values()) == [workers, workers], chunks  # one unit per target, split in advance
        time.sleep(1.0)  # writes land between the two snapshots
        rerun = subprocess.run(reshard_cmd(cfg, *args, "--json"), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        report = json.loads(rerun.stdout)
        assert report["resumed"] is True
        # it continued: it copied roughly what was left, not the whole table again
        assert report["rows_copied"] < 120_000 - killed_at + 10_000 + 2_000 * workers
        assert _chunks(env, name) == chunks, "the rerun keeps the recorded split"
        with ApplierThread(co, name):
            time.sleep(3.0)
            load.stop()
            co.wait(name, timeout=120)
    finally:
        load.stop()
    assert_targets_equal_source(env)
    assert co.verify(name).equal
