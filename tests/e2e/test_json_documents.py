"""Every command of a migration's life, run with --json on the real stack: each document
starts with the common envelope and matches its published schema (schemas/cli/; the
commands check themselves while RESHARD_CHECK_JSON_SCHEMAS is set, as in every test),
with descriptive keys and ISO 8601 times."""

import json
import subprocess
from datetime import datetime

import yaml

from reshard.json_schemas import SCHEMAS, problems
from tests.e2e.cutover_helpers import AFTER, setup
from tests.e2e.helpers import ApplierThread, reshard_cmd, write_config_file


def _run(cfg, *args, code=0) -> dict:
    proc = subprocess.run(reshard_cmd(cfg, *args, "--json"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, (args, proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert problems(doc) == [], (args, problems(doc))
    assert doc["version"] == 1 and datetime.fromisoformat(doc["generated_at"]).tzinfo is not None
    return doc


def test_a_migrations_documents_share_the_envelope_and_match_their_schemas(env, tmp_path):
    co, name = setup(env, rows=2_000, audit=False)
    cfg = write_config_file(env, tmp_path)
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(AFTER))
    start = _run(cfg, "start", name, "--to", str(tmp_path / "after.yaml"))
    assert start["command"] == "start" and start["migration"] == name and start["rows_copied"] > 0
    with env.conn("source1") as conn:
        conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id <= 300")
    applied = _run(cfg, "apply", name, "--until-caught-up", "--metrics-port", "0")
    assert applied["migration"] == name and applied["records"] >= 300 and applied["applied"] > 0
    assert _run(cfg, "wait", name)["migration"] == name
    status = _run(cfg, "status", name)
    assert status["migration"] == name and "name" not in status
    assert all("table" in c and "tbl" not in c for c in status["copy"])
    assert all(datetime.fromisoformat(c["updated_at"]) for c in status["copy"])
    listing = _run(cfg, "status")
    assert listing["migration"] is None and name in [m["name"] for m in listing["migrations"]]
    assert _run(cfg, "verify", name)["equal"] is True
    assert _run(cfg, "map", "history")["versions"]
    assert _run(cfg, "fence", "status")["clusters"]
    with ApplierThread(co, name):
        assert _run(cfg, "cutover", name)["outcome"] == "done"
        assert _run(cfg, "rollback", name)["outcome"] == "done"
    assert _run(cfg, "abort", name, "--yes")["actions"]
    assert {p.name for p in SCHEMAS.iterdir() if p.name.endswith(".schema.json")} >= {
        "start.schema.json", "apply.schema.json", "status.schema.json", "cutover.schema.json", "envelope.schema.json"}
