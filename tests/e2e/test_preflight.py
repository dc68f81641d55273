"""`reshard check` and the checks at the top of `start`, on the real stack: what passes, what a
weak role fails, the feasibility report measured on the sources, and a skewed map flagged."""

from __future__ import annotations

import json
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
            "tables", "feasibility", "skew", "target_disk"} <= names
    assert not [c for c in doc["checks"] if c["result"] == "fail"]
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
