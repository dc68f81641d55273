"""`reshard check` and the checks at the top of `start`, on the real stack: what passes, what a
weak role fails, the feasibility report measured on the sources, and a skewed map flagged."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reshard.config import ClusterConfig
from reshard.exit_codes import ExitCode
from reshard.stack.demo import demo_maps
from reshard.stack.workload import create_table, seed
from tests.e2e.helpers import reshard_cmd, write_config_file


def maps(tmp_path, shares: tuple[float, float] = (0.5, 0.5)) -> tuple[str, str]:
    before, after = demo_maps(["target1", "target2"])
    cut = int(4096 * shares[0])
    after["groups"]["accounts"]["hash"]["clusters"] = {"target1": f"0-{cut - 1}", "target2": f"{cut}-4095"}
    paths = []
    for name, doc in (("before", before), ("after", after)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        paths.append(str(path))
    return paths[0], paths[1]


def check(cfg, before: str, after: str, *extra: str) -> tuple[int, dict]:
    out = subprocess.run(reshard_cmd(cfg, "check", "--from", before, "--to", after, *extra, "--json"),
                         capture_output=True, text=True, timeout=180)
    doc = json.loads(out.stdout)
    doc["stderr"] = out.stderr[-3000:]  # for a failing assert's message
    return out.returncode, doc


def setup(env) -> None:
    with env.conn("source1") as conn:
        create_table(conn)
        seed(conn, 30_000)
        conn.execute("ANALYZE public.accounts")
    for t in ("target1", "target2"):
        with env.conn(t) as conn:
            create_table(conn)


def test_check_passes_measures_the_copy_and_flags_a_skewed_map(env, tmp_path):
    setup(env)
    cfg = write_config_file(env, tmp_path)
    before, after = maps(tmp_path)
    code, doc = check(cfg, before, after)
    assert code == 0, (doc.get("error"), doc["stderr"])
    names = {c["name"] for c in doc["checks"]}
    assert {"config", "services", "version", "wal_level", "replication_slots", "wal_senders", "privileges",
            "tables", "connector_login", "feasibility", "skew", "target_disk"} <= names
    assert not [c for c in doc["checks"] if c["result"] == "fail"]
    connect = next(c["detail"] for c in doc["checks"] if c["name"] == "services" and "Kafka Connect" in c["detail"])
    assert re.search(r"Kafka Connect \d+\.\d+\S* at .* with Debezium's PostgreSQL connector \d+\.\d+", connect), connect
    disk = {c["cluster"]: c["detail"] for c in doc["checks"] if c["name"] == "target_disk"}
    assert set(disk) == {"target1", "target2"} and all("bytes free" in d for d in disk.values()), disk  # local
    s = doc["feasibility"]["sources"]["source1"]
    assert s["moving_bytes"] > 1_000_000 and s["sample_read_bytes_per_s"] > 0 and s["copy_seconds"] >= 0
    assert doc["feasibility"]["verdict"] == "feasible"
    assert {k["destination"] for k in doc["skew"]} == {"target1", "target2"}
    assert all(0.8 < k["rows_vs_mean"] < 1.2 for k in doc["skew"]), doc["skew"]
    # nine tenths of the keys to one target: flagged before anything moves
    before, lopsided = maps(tmp_path, (0.9, 0.1))
    code, doc = check(cfg, before, lopsided, "--no-estimates")
    assert code == 0 and "skew" not in {c["name"] for c in doc["checks"]}  # no measuring asked
    code, doc = check(cfg, before, lopsided)
    flagged = [c for c in doc["checks"] if c["name"] == "skew" and c["result"] == "warn"]
    assert [c["cluster"] for c in flagged] == ["target1"], doc["checks"]


def test_a_role_without_replication_fails_the_check_and_start_creates_nothing(env, tmp_path):
    setup(env)
    target = env.dsn("target1")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS reshard_weak")
        conn.execute("CREATE ROLE reshard_weak LOGIN")
        conn.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO reshard_weak")
    weak = make_conninfo(target, user="reshard_weak")
    clusters = dict(env.config.clusters)
    clusters["target1"] = ClusterConfig("target1", weak, weak)
    env2 = replace(env, config=replace(env.config, clusters=clusters))
    cfg = write_config_file(env2, tmp_path)
    before, after = maps(tmp_path)
    code, doc = check(cfg, before, after, "--no-estimates")
    assert code == ExitCode.CHECK_FAILED
    failed = [(c["name"], c["cluster"]) for c in doc["checks"] if c["result"] == "fail"]
    assert ("privileges", "target1") in failed, doc["checks"]
    out = subprocess.run(reshard_cmd(cfg, "start", env.migration(), "--from", before, "--to", after),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == ExitCode.BAD_INPUT, out.stderr
    assert "start refused before creating anything: privileges on target1" in out.stderr, out.stderr
    with env.conn("source1") as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
                            ).fetchone()[0] == 0
    assert conninfo_to_dict(weak)["user"] == "reshard_weak"


def test_a_login_the_connect_worker_cannot_make_fails_the_check_and_start_creates_nothing(env, tmp_path):
    """reshard reaches every cluster, but the Connect worker could not: target1's password
    reference names a file the worker cannot read, target2's connect_dsn a port nothing listens
    on from the worker's side. Before this check, `start` found the second only at the cutover
    (the reverse connector failing) and the first when its forward connector failed."""
    setup(env)
    clusters = dict(env.config.clusters)
    t1, t2 = clusters["target1"], clusters["target2"]
    clusters["target1"] = replace(t1, connect_password="${file:/nonexistent/reshard-check.properties:password}")
    clusters["target2"] = replace(t2, connect_dsn=make_conninfo(t2.connect_dsn, port="1"))
    env2 = replace(env, config=replace(env.config, clusters=clusters))
    cfg = write_config_file(env2, tmp_path)
    before, after = maps(tmp_path)
    code, doc = check(cfg, before, after, "--no-estimates")
    assert code == ExitCode.CHECK_FAILED
    login = {c["cluster"]: c for c in doc["checks"] if c["name"] == "connector_login"}
    assert login["source1"]["result"] == "ok", login
    assert login["target1"]["result"] == "fail" and "/nonexistent/reshard-check.properties" in login["target1"]["detail"]
    assert login["target2"]["result"] == "fail" and "refused" in login["target2"]["detail"], login
    out = subprocess.run(reshard_cmd(cfg, "start", env.migration(), "--from", before, "--to", after),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == ExitCode.BAD_INPUT, out.stderr
    assert "connector_login on target1" in out.stderr and "connector_login on target2" in out.stderr, out.stderr
    with env.conn("source1") as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
                            ).fetchone()[0] == 0


def test_start_measures_how_soon_debezium_confirms_a_change_and_a_stalled_one_is_seen(env, tmp_path):
    """Connect's REST API does not show the worker's offset.flush.interval.ms, which every
    cutover's drain waits on: `start` measures it on the running stream. A connector that does
    not confirm (paused here; a worker flushing every 60 s, Kafka's default, looks the same to
    a 5 s limit) is reported as such, and confirms again once resumed."""
    from reshard.kafka.connect_client import ConnectClient
    from reshard.kafka.streams import forward
    from reshard.proof.catchup import confirm_delay

    setup(env)
    cfg = write_config_file(env, tmp_path)
    before, after = maps(tmp_path)
    name = env.migration()
    out = subprocess.run(reshard_cmd(cfg, "start", name, "--from", before, "--to", after, "--json"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "source1: Debezium confirms a change in" in out.stderr, out.stderr
    confirm = json.loads(out.stdout)["confirm_ms"]
    assert set(confirm) == {"source1"} and 0 < confirm["source1"] < 1000, confirm
    stream = forward(name, "source1")
    client = ConnectClient(env.config.connect)
    client.pause(stream.connector)
    try:
        assert confirm_delay(env.config, name, [stream], samples=3, limit_s=1.0) == {"source1": None}
    finally:
        client.resume(stream.connector)
    client.wait_running(stream.connector)
    again = confirm_delay(env.config, name, [stream], samples=3, limit_s=10.0)["source1"]
    assert again is not None and again < 1000, again
