"""`reshard map` and `reshard fence` through the CLI against a real control database."""

import json
import subprocess

import yaml

from reshard.exit_codes import ExitCode
from tests.e2e.helpers import reshard_cmd, write_config_file

GROUP = {"key": "bigint", "tables": {"public.kv": "k"}}
V1 = {"name": "one", "groups": {"kv": {**GROUP, "hash": {"buckets": 16, "clusters": {"source1": "0-15"}}}}}
V2 = {"name": "two", "groups": {"kv": {**GROUP, "hash": {"buckets": 16, "clusters": {"source1": "0-7", "target1": "8-15"}}}}}


def cli(cfg, *args, code=0):
    proc = subprocess.run(reshard_cmd(cfg, *args), capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout) if "--json" in args and proc.stdout else proc


def test_map_versions_and_fence_commands(env, tmp_path):
    cfg = write_config_file(env, tmp_path)
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(V1))
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump(V2))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(
        {"groups": {"kv": {**GROUP, "hash": {"buckets": 16, "clusters": {"source1": "0-7", "nowhere": "8-15"}}}}}))
    for c in ("source1", "target1"):
        with env.conn(c) as conn:
            conn.execute("CREATE TABLE public.kv (k bigint PRIMARY KEY)")

    one = cli(cfg, "map", "register", str(tmp_path / "v1.yaml"), "--initial", "--json")
    assert one["epoch"] == 1 and one["activated"]
    again = cli(cfg, "map", "register", str(tmp_path / "v1.yaml"), "--json")
    assert again["epoch"] == 1 and not again["created"]
    two = cli(cfg, "map", "register", str(tmp_path / "v2.yaml"), "--note", "split", "--json")
    assert two["epoch"] == 2 and not two["activated"]
    bad = cli(cfg, "map", "register", str(tmp_path / "bad.yaml"), code=ExitCode.BAD_INPUT)
    assert "unknown cluster(s) nowhere" in bad.stderr
    refused = cli(cfg, "map", "register", str(tmp_path / "v2.yaml"), "--initial", code=ExitCode.BAD_INPUT)
    assert "already active" in refused.stderr

    hist = cli(cfg, "map", "history", "--json")["versions"]
    assert [(v["epoch"], v["active"], v["note"]) for v in hist] == [(1, True, ""), (2, False, "split")]
    shown = cli(cfg, "map", "show", "--json")
    assert shown["epoch"] == 1 and shown["map"]["groups"]["kv"]["hash"]["clusters"] == {"source1": "0-15"}
    assert cli(cfg, "map", "show", "2", "--json")["map"]["name"] == "two"

    plan = cli(cfg, "plan", "--to", str(tmp_path / "v2.yaml"), "--json")
    assert [(m["source"], m["target"]) for m in plan["moves"]] == [("source1", "target1")]

    installed = cli(cfg, "fence", "install", "--json")
    assert installed["tables"]["source1"] == ["public.kv"] and installed["epoch"] == 1
    status = cli(cfg, "fence", "status", "--json")["clusters"]
    assert status["target1"][0]["epoch"] == 1 and status["target1"][0]["active"]
    with env.conn("target1") as conn:  # target1 owns nothing at epoch 1
        try:
            conn.execute("INSERT INTO kv VALUES (1)")
            raise AssertionError("the fence let a write through")
        except Exception as exc:
            assert getattr(exc, "sqlstate", None) == "RS002"
    removed = cli(cfg, "fence", "remove", "--yes", "--json")["tables"]
    assert removed["source1"] == ["public.kv"]
    assert cli(cfg, "fence", "status", "--json")["clusters"]["source1"] == []
    with env.conn("target1") as conn:
        conn.execute("INSERT INTO kv VALUES (1)")
