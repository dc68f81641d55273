"""The copy's throttle is real and visible: a fixed rows/s cap holds the copy back, status
and progress say so while it runs, and the copy still ends complete and equal."""

import json
import subprocess
import time

import psycopg
import yaml

from reshard.stack.demo import demo_maps
from tests.e2e.helpers import (
    ApplierThread,
    assert_targets_equal_source,
    prepare,
    reshard_cmd,
    wait_for,
    write_config_file,
)


def _throttle_states(env, name) -> list[str]:
    with psycopg.connect(env.config.control_dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT throttle FROM reshard.copy_progress WHERE migration = %s AND NOT done", (name,)) if r[0]]


def test_a_rows_per_second_cap_is_shown_in_status_and_holds_the_copy_back(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=24_000, migration=name)
    cfg = write_config_file(env, tmp_path)
    _before, after = demo_maps(["target1", "target2"])
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))
    log = tmp_path / "start.log"
    proc = subprocess.Popen(reshard_cmd(cfg, "start", name, "--to", str(tmp_path / "after.yaml"), "--batch-rows",
                                        "1000", "--copy-workers", "2", "--max-rows-per-second", "3000", "--json"),
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)
    states = wait_for(lambda: _throttle_states(env, name), 60, "status to show the throttle")
    assert any("--max-rows-per-second 3000" in s for s in states), states
    status = subprocess.run(reshard_cmd(cfg, "status", name), capture_output=True, text=True, timeout=60)
    assert "throttled to" in status.stdout or "done" in status.stdout, status.stdout
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log.read_text()
    report = json.loads(out)
    assert report["rows_copied"] == 24_000
    held = report["throttle"]["source1"]
    assert held["waited_s"] > 1.0, held  # 24,000 rows under a 3,000 rows/s cap: the copy was held back
    assert "throttled to" in log.read_text()  # progress said so too
    with ApplierThread(co, name):
        time.sleep(1.0)
        co.wait(name, timeout=60)
    assert_targets_equal_source(env)
