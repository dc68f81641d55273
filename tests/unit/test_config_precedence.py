"""Which reshard.yaml is read is never a surprise: `reshard config` says which and why,
--json documents and errors name it, and an invalid file exits 3 with the path in it."""

import json
import subprocess
import sys

import yaml

from tests.unit.test_config import GOOD


def _run(cwd, *args, env_extra=None):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RESHARD_CONFIG", "RESHARD_HOME")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "reshard.cli", "--progress", "off", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_working_directory_file_wins_over_the_stacks_and_says_so(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "reshard.yaml").write_text(yaml.safe_dump(GOOD))
    out = _run(work, "config", "--json", env_extra={"RESHARD_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["config_file"] == {"path": str(home / "reshard.yaml"),
                             "chosen_by": "the embedded stack's ($RESHARD_HOME or ./.reshard)"}
    (work / "reshard.yaml").write_text(yaml.safe_dump(GOOD))
    doc = json.loads(_run(work, "config", "--json", env_extra={"RESHARD_HOME": str(home)}).stdout)
    assert doc["config_file"]["path"] == str(work / "reshard.yaml")
    assert doc["config_file"]["chosen_by"] == "./reshard.yaml in the working directory"
    assert len(doc["precedence"]) == 3
    doc = json.loads(_run(work, "--config", str(home / "reshard.yaml"), "config", "--json").stdout)
    assert doc["config_file"] == {"path": str(home / "reshard.yaml"), "chosen_by": "--config"}
    human = _run(work, "config", env_extra={"RESHARD_CONFIG": str(home / "reshard.yaml")}).stdout
    assert f"config      {home / 'reshard.yaml'}" in human and "chosen by   $RESHARD_CONFIG" in human


def test_an_invalid_file_exits_3_naming_the_file_and_the_key(tmp_path):
    bad = {**GOOD, "kafka": {**GOOD["kafka"], "partitons": 8}}
    (tmp_path / "reshard.yaml").write_text(yaml.safe_dump(bad))
    out = _run(tmp_path, "config")
    assert out.returncode == 3
    assert f"{tmp_path / 'reshard.yaml'}: kafka.partitons: unknown key (did you mean 'partitions'?)" in out.stderr
    assert "Traceback" not in out.stderr
    out = _run(tmp_path, "config", "--json")
    assert out.returncode == 3 and json.loads(out.stdout)["kind"] == "bad_input"
