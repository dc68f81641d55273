"""`--log-format json` on the real stack: `reshard start` and `reshard apply` write only
JSON lines on stderr, each with its migration (and the worker's id), progress included,
and a password carried by every DSN of the configuration never appears."""

import json
import stat
import subprocess
import time
from pathlib import Path

import yaml

from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import forward
from reshard.stack.demo import demo_maps
from tests.e2e.helpers import TARGETS, prepare, reshard_cmd, write_config_file

SECRET = "Pw-n0t-f0r-l0gs"


def _json_lines(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_json_logs_have_context_and_no_password(env, tmp_path):
    name = env.migration()
    prepare(env, rows=3000, migration=name)
    cfg = write_config_file(env, tmp_path)
    doc = yaml.safe_load(cfg.read_text())
    # the embedded clusters trust loopback: the password is accepted and ignored, but it is in every DSN
    doc["control"]["dsn"] += f" password={SECRET}"
    for c in doc["clusters"].values():
        c["dsn"] += f" password={SECRET}"
    cfg.write_text(yaml.safe_dump(doc))
    maps = tmp_path / "after.yaml"
    maps.write_text(yaml.safe_dump(demo_maps(TARGETS)[1]))

    start = subprocess.run(reshard_cmd(cfg, "--log-format", "json", "start", name, "--to", str(maps)),
                           capture_output=True, text=True, timeout=300)
    assert start.returncode == 0, start.stderr
    lines = _json_lines(start.stderr)
    assert all(line["migration"] == name for line in lines if line["logger"] == "reshard.observe.progress")
    copy = [line for line in lines if line.get("task") == "copy"]
    assert copy and copy[-1]["finished"] is True and copy[-1]["done"] > 0 and "rate_per_s" in copy[-1]

    with env.conn("source1") as conn:
        conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id <= 1000")
    apply = subprocess.run(reshard_cmd(cfg, "--log-format", "json", "apply", name, "--until-caught-up",
                                       "--metrics-port", "0", "--json"), capture_output=True, text=True, timeout=300)
    assert apply.returncode == 0, apply.stderr
    lines = _json_lines(apply.stderr)
    worker = [line for line in lines if line["logger"] == "reshard.cdc_applier.worker"]
    assert worker[0]["message"].startswith("started: consumer group reshard-") and worker[-1]["message"].startswith(
        "stopped: ")
    assert all(line["migration"] == name and line["worker"].startswith("applier@") for line in worker)
    assert json.loads(apply.stdout)["applied"] >= 1000
    for out in (start.stdout, start.stderr, apply.stdout, apply.stderr):
        assert SECRET not in out
    # nor in the connector's config, which anyone who reaches Connect's REST API can read:
    # it holds a reference the worker's file provider resolves, and the file is the owner's
    client = ConnectClient(env.config.connect)
    connector = forward(name, "source1").connector
    config = client.config(connector)
    assert SECRET not in json.dumps(config)
    secrets = Path(env.config.connect.secrets_dir) / "source1.properties"
    assert config["database.password"] == f"${{file:{secrets}:password}}"
    assert secrets.read_text() == f"password={SECRET}\n" and stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert client.status(connector)["tasks"][0]["state"] == "RUNNING"  # the worker resolved it


def test_a_pgpass_password_reaches_debezium_as_a_reference(env, tmp_path, monkeypatch):
    """A DSN without a password, libpq finding it in a password file: Debezium cannot read
    .pgpass, so reshard hands the password to the worker's file provider (it was "" before)."""
    name = env.migration()
    co = prepare(env, rows=200, migration=name)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:*:{SECRET}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    co.start(name)
    config = ConnectClient(env.config.connect).config(forward(name, "source1").connector)
    secrets = Path(env.config.connect.secrets_dir) / "source1.properties"
    assert config["database.password"] == f"${{file:{secrets}:password}}"
    assert secrets.read_text() == f"password={SECRET}\n"


def test_connect_log_rolls_and_leaves_out_the_per_commit_lines(env, stack):
    """The embedded Connect worker committed offsets for the migrations this session ran
    (every 50 ms per task); none of those lines is in its log, which rolls by size."""
    home = stack.home / "connect"
    before = (home / "connect.log").stat().st_size  # a reused test home keeps older logs
    name = env.migration()
    co = prepare(env, rows=500, migration=name)
    co.start(name)
    with env.conn("source1") as conn:
        for _ in range(20):
            conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id <= 10")
    time.sleep(3)  # several offset commits of the task (every 50 ms while it streams)
    settings = (home / "log4j2.properties").read_text()
    assert "appender.file.type = RollingFile" in settings and "SizeBasedTriggeringPolicy" in settings
    with open(home / "connect.log", "rb") as f:
        f.seek(before)
        log = f.read().decode(errors="replace")
    assert "io.debezium" in log  # the connector started: the worker does log there
    assert "Committing offsets" not in log
