"""The docs' router example (docs/shard-maps.md) runs as written, against a real fenced shard."""

import re
from pathlib import Path

from reshard.cluster import fence, shard_schema
from reshard.config import write_config
from reshard.coordinator import Coordinator
from reshard.maps.shardmap import parse_map

SHARD_MAPS_DOC = Path(__file__).resolve().parents[2] / "docs" / "shard-maps.md"


def test_router_example_from_the_docs(env, tmp_path, monkeypatch, capsys):
    code = re.search(r"<!-- router-example.*?-->\s*```python\n(.*?)```", SHARD_MAPS_DOC.read_text(), re.S).group(1)
    m = parse_map({"groups": {"accounts": {"key": "bigint", "tables": {"public.accounts": "id"}, "hash": {
        "buckets": 4096, "clusters": {"target1": "0-2047", "target2": "2048-4095"}}}}})
    epoch, _, _ = Coordinator.open(env.config).register_map(m, initial=True)
    owner = m.owner("public.accounts", [42])
    for c in ("target1", "target2"):
        with env.conn(c) as conn:
            shard_schema.install(conn)
            conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric NOT NULL)")
            if c == owner:
                conn.execute("INSERT INTO accounts VALUES (42, 100)")
    fence.fence_map(env.config, epoch, m)
    cfg = tmp_path / "reshard.yaml"
    write_config(env.config, cfg)
    monkeypatch.setenv("RESHARD_CONFIG", str(cfg))
    exec(compile(code, "docs/shard-maps.md router example", "exec"), {})
    assert f"account 42 is on {owner} at epoch {epoch}" in capsys.readouterr().out
    with env.conn(owner) as conn:
        assert conn.execute("SELECT balance FROM accounts WHERE id = 42").fetchone()[0] == 110
