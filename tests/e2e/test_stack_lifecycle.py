"""`reshard stack up | status | down` through the CLI, on a stack of its own."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import yaml

from reshard.cluster import failover
from reshard.config import load_config
from reshard.stack.process import ProcessRecord, is_running


def run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESHARD_HOME": str(home)}
    env.pop("RESHARD_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "reshard.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=home.parent)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_up_twice_status_and_down_leave_no_process_behind(tmp_path):
    home = tmp_path / "own-stack"
    try:
        first = json.loads(run(home, "stack", "up", "--sources", "1", "--targets", "1", "--json").stdout)
        assert set(first["started"]) == {"control", "source1", "target1", "kafka", "connect", "registry"}
        assert (home / "reshard.yaml").is_file()
        assert all(p["healthy"] for p in first["parts"])

        again = json.loads(run(home, "stack", "up", "--sources", "1", "--targets", "1", "--json").stdout)
        assert again["started"] == []
        assert set(again["already_running"]) == set(first["started"])
        assert [p["pid"] for p in again["parts"]] == [p["pid"] for p in first["parts"]]

        status = json.loads(run(home, "stack", "status", "--json").stdout)
        assert {p["name"]: (p["port"], p["healthy"]) for p in status["parts"]} == {
            p["name"]: (p["port"], True) for p in first["parts"]}
        recorded = _records(home)
        assert len(recorded) == 6 and all(is_running(r) for r in recorded.values())

        # the registry keeps its schemas in the control PostgreSQL: an id survives a SIGKILL
        url = yaml.safe_load((home / "reshard.yaml").read_text())["kafka"]["schema_registry_url"]
        schema = json.dumps({"type": "record", "name": "Probe", "fields": [{"name": "id", "type": "long"}]})
        sid = _http(f"{url}/subjects/probe-value/versions", {"schema": schema})["id"]
        os.kill(recorded["registry"].pid, signal.SIGKILL)
        _wait(lambda: not is_running(recorded["registry"]))
        assert json.loads(run(home, "stack", "up", "--sources", "1", "--targets", "1", "--json").stdout)[
            "started"] == ["registry"]
        assert json.loads(_http(f"{url}/schemas/ids/{sid}")["schema"]) == json.loads(schema)
        recorded = _records(home)

        # the broker killed (by its recorded pid): Connect still answers its REST API, but it
        # cannot reach Kafka, and status says so (exit 4) instead of calling it healthy
        os.kill(recorded["kafka"].pid, signal.SIGKILL)
        _wait(lambda: not is_running(recorded["kafka"]))
        broken = run(home, "stack", "status", "--json", check=False)
        assert broken.returncode == 4
        by_name = {p["name"]: p for p in json.loads(broken.stdout)["parts"]}
        assert not by_name["kafka"]["running"]
        assert by_name["connect"]["running"] and not by_name["connect"]["healthy"]
        assert "cannot reach Kafka" in by_name["connect"]["problem"]
        assert "cannot reach Kafka" in run(home, "stack", "status", check=False).stdout
        back = json.loads(run(home, "stack", "up", "--sources", "1", "--targets", "1", "--json").stdout)
        assert back["started"] == ["kafka"] and all(p["healthy"] for p in back["parts"])
        recorded = _records(home)
    finally:
        down = json.loads(run(home, "stack", "down", "--json").stdout)
    assert set(down["stopped"]) == set(first["started"])
    still = [name for name, rec in recorded.items() if is_running(rec)]
    assert still == [], f"still running after down: {still}"
    assert _records(home) == {}, "down must forget what it stopped"
    after = run(home, "stack", "status", "--json", check=False)
    assert after.returncode == 4
    assert not any(p["running"] for p in json.loads(after.stdout)["parts"])
    pg_data = (home / "pg").resolve()
    purged = json.loads(run(home, "stack", "down", "--purge", "--yes", "--json").stdout)
    assert purged["stopped"] == [] and not home.exists() and not pg_data.exists()


def test_up_with_a_standby_per_source_lists_both_and_restarts_it(tmp_path):
    home = tmp_path / "standby-stack"
    refused = run(tmp_path / "secured", "stack", "up", "--standby", "--secure", check=False)
    assert refused.returncode == 3 and "--standby and --secure together" in refused.stderr
    args = ("stack", "up", "--sources", "1", "--targets", "1", "--pg-version", "17", "--standby", "--json")
    try:
        first = json.loads(run(home, *args).stdout)
        assert {"source1", "source1-standby"} <= set(first["started"])
        parts = {p["name"]: p for p in first["parts"]}
        assert parts["source1-standby"]["healthy"] and parts["source1-standby"]["version"] == "17"
        config = load_config(home / "reshard.yaml")
        source = config.cluster("source1")
        assert source.hosts() == [("127.0.0.1", str(parts["source1"]["port"])),
                                  ("127.0.0.1", str(parts["source1-standby"]["port"]))]
        with psycopg.connect(source.dsn, autocommit=True) as conn:  # reaches the primary
            assert not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            (sb,) = failover.standbys(source, failover.locate(source, conn), conn, [])
        assert sb.missing == [], sb  # set up to carry failover slots through a promotion
        signal_file = Path(json.loads((home / "stack.json").read_text())["standbys"]["source1"]["datadir"]) \
            / "standby.signal"
        made = signal_file.stat().st_mtime
        stopped = json.loads(run(home, "stack", "down", "--json").stdout)["stopped"]
        assert stopped.index("source1-standby") < stopped.index("source1"), stopped
        again = json.loads(run(home, *args).stdout)
        assert "source1-standby" in again["started"] and all(p["healthy"] for p in again["parts"])
        assert signal_file.stat().st_mtime == made  # the same standby restarted, not copied again
        with psycopg.connect(config.cluster("source1").dsn.replace("target_session_attrs=read-write",
                                                                   "target_session_attrs=standby")) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    finally:
        run(home, "stack", "down", "--purge", "--yes", "--json", check=False)
    assert not home.exists()


def _http(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _records(home: Path) -> dict[str, ProcessRecord]:
    """The (pid, start time) identities `stack up` recorded, by part name."""
    state = json.loads((home / "stack.json").read_text())
    parts = {**state["clusters"], **{k: state.get(k) for k in ("kafka", "connect", "registry")}}
    return {n: ProcessRecord.from_dict(p["process"]) for n, p in parts.items() if p and p.get("process")}


def test_a_broker_that_fails_to_start_leaves_no_postgres_orphaned(tmp_path, monkeypatch):
    """The PostgreSQL servers start beside the broker; when the broker's start fails (here:
    its storage format, made to fail), they are still recorded, and `down` stops them."""
    from reshard.errors import StackError
    from reshard.stack import Stack
    from reshard.stack.kafka import KafkaBroker

    def broken_init(self, art):
        raise StackError("kafka-storage format failed (injected)")

    monkeypatch.setattr(KafkaBroker, "init", broken_init)
    home = tmp_path / "half-stack"
    st = Stack(home, say=lambda m: None)
    try:
        try:
            st.up(sources=1, targets=1)
            raise AssertionError("up should have failed")
        except StackError as exc:
            assert "injected" in str(exc)
        pg = {n: r for n, r in _records(home).items() if n not in ("kafka", "connect", "registry")}
        assert set(pg) == {"control", "source1", "target1"} and all(is_running(r) for r in pg.values())
    finally:
        st.down()
    assert not any(is_running(r) for r in pg.values())
