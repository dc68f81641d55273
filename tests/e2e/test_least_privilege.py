"""A migration with the documented roles (docs/roles.sql) and no superuser for reshard's
own connections: copy, stream, verify, cut over (fence, reverse slots, replication
origins) and roll back. Debezium connects with the same shard role."""

import json
import signal
import subprocess
from pathlib import Path

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reshard.stack.demo import demo_maps
from reshard.stack.workload import TABLE, create_table, seed
from tests.e2e.helpers import TARGETS, reshard_cmd, spawn, write_config_file

ROLES = Path(__file__).resolve().parents[2] / "docs" / "roles.sql"


def _as(dsn: str, user: str) -> str:
    return make_conninfo(dsn, user=user)


def _run(cfg, *args, timeout=300):
    out = subprocess.run(reshard_cmd(cfg, *args, "--json"), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (args, out.stderr[-3000:])
    return json.loads(out.stdout)


def test_a_migration_runs_with_the_documented_roles_and_no_superuser(env, tmp_path):
    for cluster in ("source1", *TARGETS):
        with env.conn(cluster) as conn:
            conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_owner') THEN "
                         "CREATE ROLE app_owner NOLOGIN; END IF; END $$")
            create_table(conn)
            conn.execute(f"ALTER TABLE {TABLE} OWNER TO app_owner")
            conn.execute(ROLES.read_text())
            assert dict(conn.execute("SELECT rolname, rolsuper FROM pg_roles WHERE rolname IN "
                                     "('reshard', 'app_owner')").fetchall()) == {"reshard": False, "app_owner": False}
            if cluster == "source1":
                seed(conn, 3000)
    control_db = conninfo_to_dict(env.config.control_dsn)["dbname"]
    with psycopg.connect(make_conninfo(env.config.control_dsn, dbname="postgres"), autocommit=True) as conn:
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reshard_control') THEN "
                     "CREATE ROLE reshard_control LOGIN; END IF; END $$")
        conn.execute(f'ALTER DATABASE "{control_db}" OWNER TO reshard_control')
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'reshard_control'").fetchone() == (False,)

    cfg = write_config_file(env, tmp_path)
    doc = yaml.safe_load(cfg.read_text())
    doc["control"]["dsn"] = _as(doc["control"]["dsn"], "reshard_control")
    for c in doc["clusters"].values():
        c["dsn"] = _as(c["dsn"], "reshard")
        c.pop("connect_dsn", None)
    cfg.write_text(yaml.safe_dump(doc))
    before, after = demo_maps(TARGETS)
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(before))
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))
    name = env.migration()

    _run(cfg, "start", name, "--to", str(tmp_path / "after.yaml"), "--from", str(tmp_path / "before.yaml"))
    with env.conn("source1") as conn:
        conn.execute(f"UPDATE {TABLE} SET balance = balance + 1 WHERE id <= 500")
        conn.execute(f"DELETE FROM {TABLE} WHERE id BETWEEN 501 AND 550")
    applier = spawn(cfg, tmp_path / "apply.log", "apply", name, "--metrics-port", "0")
    try:
        _run(cfg, "wait", name)
        assert _run(cfg, "verify", name)["equal"] is True
        cut = _run(cfg, "cutover", name)  # fences, reverse slots on the targets, origins
        assert cut["outcome"] == "done", cut
        with env.conn("target1") as conn:  # a write on a new owner comes back to the source
            conn.execute(f"UPDATE {TABLE} SET owner = 'after-cutover' WHERE id IN "
                         f"(SELECT id FROM {TABLE} ORDER BY id LIMIT 5)")
        _run(cfg, "wait", name)
        back = _run(cfg, "rollback", name)
        assert back["outcome"] == "done", back
    finally:
        applier.send_signal(signal.SIGTERM)
        applier.wait(timeout=60)
    assert applier.returncode == 0, (tmp_path / "apply.log").read_text()[-3000:]
    with env.conn("source1") as conn:
        assert conn.execute(f"SELECT count(*) FROM {TABLE} WHERE owner = 'after-cutover'").fetchone()[0] == 5
    _run(cfg, "abort", name, "--yes")
