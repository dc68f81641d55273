"""reshard as a user installs it: the wheel, in a fresh virtualenv outside the checkout,
runs a verified migration against the embedded stack. Templates, POMs and schemas come
from the package's data; the stages live under the reshard namespace only."""

import json
import os
import subprocess
import zipfile

from reshard.json_schemas import CHECK_ENV
from tests.e2e.helpers import write_config_file


def test_the_built_wheel_runs_a_migration_outside_the_checkout(env, tmp_path, installed_wheel):
    wheel, venv = installed_wheel.wheel, installed_wheel.venv
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("reshard-")}
    assert tops == {"reshard"}, tops  # no generic top-level packages (snapshotter, cutover, ...)
    for data in ("reshard/connectors/debezium-postgres.json", "reshard/connectors/pom.xml",
                 "reshard/connectors/echo-filter/src/main/java/dev/reshard/connect/OriginStartsWith.java",
                 "reshard/schemas/dead_letter.avsc", "reshard/schemas/cli/envelope.schema.json",
                 "reshard/control/migrations/0001_base.sql", "reshard/cluster/shard_sql/0002_copy_chunks.sql",
                 "reshard/py.typed", "reshard/snapshotter/snapshot.py", "reshard/cdc_applier/worker.py"):
        assert data in names, data
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta

    work = tmp_path / "elsewhere"  # not the checkout: nothing may be read from it
    work.mkdir()
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import snapshotter"], cwd=work, capture_output=True)
    assert probe.returncode != 0 and b"No module named 'snapshotter'" in probe.stderr
    # the applier's compiled Avro reader and key hash were built into the wheel and load
    compiled = subprocess.run([str(venv / "bin/python"), "-c", "import reshard.cdc_applier._envelope, "
                               "reshard.maps._keyhash"], cwd=work, capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    cfg = write_config_file(env, tmp_path)
    user_env = {k: v for k, v in os.environ.items() if k != CHECK_ENV}  # a user has no jsonschema installed
    out = subprocess.run([str(venv / "bin/reshard"), "--config", str(cfg), "--progress", "off", "demo",
                          "--name", env.migration(), "--rows", "5000", "--stream-seconds", "3", "--cleanup",
                          "--json"], cwd=work, env=user_env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["ok"] and report["verify"]["equal"], report
    # the demo's writer inserts and deletes during the copy: about 5,000 rows, not exactly
    assert report["copy"]["rows_copied"] > 4000 and report["apply"]["applied"] > 0
