"""`reshard demo`, the README's main job, as a command: report and row-for-row result."""

import json
import subprocess

from reshard.kafka.connect_client import ConnectClient
from tests.e2e.helpers import assert_targets_equal_source, reshard_cmd, write_config_file


def test_demo_reports_a_verified_migration_and_the_tables_match_row_for_row(env, tmp_path):
    cfg = write_config_file(env, tmp_path)
    proc = subprocess.run(reshard_cmd(cfg, "demo", "--rows", "20000", "--stream-seconds", "4", "--name",
                                      env.migration(), "--json"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["verify"]["equal"] is True
    # the load starts before the copy's snapshot (writes before, during and after it), so its
    # deletes and inserts may already have changed the 20,000 rows a little when it is taken
    assert 19_000 <= report["copy"]["rows_copied"] <= 21_000 and report["copy"]["rows_per_second"] > 0
    assert report["apply"]["applied"] > 100 and report["load"]["operations"] > 100
    assert report["catch_up"]["seconds"] < 60
    assert "copy:" in proc.stderr  # progress went to stderr, the JSON alone to stdout
    assert assert_targets_equal_source(env) > 20_000
    left = report["left_running"]  # said, with the way to remove it
    assert left["state"] == "streaming" and left["connectors"] and left["slots"]
    assert left["remove_with"] == f"reshard abort {env.migration()} --yes"


def test_demo_with_cutover_cuts_over_under_the_load_and_still_verifies(env, tmp_path):
    cfg = write_config_file(env, tmp_path)
    args = ("demo", "--rows", "10000", "--stream-seconds", "4", "--cutover", "--json")
    proc = subprocess.run(reshard_cmd(cfg, *args, "--name", env.migration("a")), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["cutover"]["outcome"] == "done" and report["cutover"]["pause_ms"] < 2000
    assert report["ok"] is True and report["load"]["errors"] == 0
    assert report["left_running"]["remove_with"].startswith(f"reshard complete {env.migration('a')} ")
    # a second run starts clean from the cut-over one; with --cleanup it leaves nothing running
    again = subprocess.run(reshard_cmd(cfg, "demo", "--rows", "5000", "--stream-seconds", "2", "--name",
                                       env.migration("b"), "--cleanup", "--json"), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    assert second["reset"] == [env.migration("a")] and second["left_running"] is None
    assert not [c for c in ConnectClient(env.config.connect).connectors() if env.migration("b") in c]
