"""The whole lifecycle against clusters secured as a production fleet is, with reshard as a
user installs it (the wheel, outside the checkout) and the documented least-privilege roles.

The embedded stack in its secured mode (``stack up --secure``, certificates generated for
this test): PostgreSQL shard clusters take only TLS connections with SCRAM passwords (the
DSNs verify the server, verify-full); Kafka has one SASL_SSL listener with SCRAM-SHA-256;
Connect's REST API is https with basic auth. reshard's own roles get their passwords from
a password file, Kafka's and Connect's from references. No secret may be readable through
Connect's REST API, in any log, or in any command's output.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import make_conninfo

from reshard.config import Config, KafkaConfig, write_config
from reshard.errors import Unavailable
from reshard.json_schemas import CHECK_ENV
from reshard.kafka.admin import KafkaAdmin, client_conf
from reshard.kafka.connect_client import ConnectClient, ConnectError
from reshard.stack import Stack
from reshard.stack.demo import demo_maps
from reshard.stack.security import Security
from reshard.stack.workload import TABLE, create_table, seed
from tests.e2e.helpers import TARGETS

ROLES = Path(__file__).resolve().parents[2] / "docs" / "roles.sql"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    home = tmp_path_factory.mktemp("secured-stack")
    st = Stack(home, say=lambda m: print(f"[secured stack] {m}", flush=True))
    try:
        st.up(sources=1, targets=len(TARGETS), secure=True)
        yield st
    finally:
        st.down()
        st.purge()


def _refusals(config: Config) -> None:
    """Nothing gets in without TLS and the right credentials."""
    dsn = config.cluster("source1").dsn
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        psycopg.connect(make_conninfo(dsn, sslmode="disable"), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(make_conninfo(dsn, passfile="/dev/null", password="wrong"), connect_timeout=5)
    plain = AdminClient(client_conf(KafkaConfig(config.kafka.bootstrap_servers)))
    with pytest.raises(KafkaException):
        plain.list_topics(timeout=5)
    os.environ["RESHARD_TEST_WRONG"] = "wrong"
    wrong = KafkaConfig(config.kafka.bootstrap_servers,
                        client={**config.kafka.client, "sasl.password": "${env:RESHARD_TEST_WRONG}"})
    with pytest.raises(Unavailable):
        KafkaAdmin(wrong).check(timeout=5)
    KafkaAdmin(config.kafka).check(timeout=10)  # the same client with the right password gets in
    with pytest.raises(ConnectError, match=r"refused reshard's credentials \(401\)"):
        ConnectClient(replace(config.connect, username=None, password=None)).connectors()


def test_the_installed_wheel_runs_the_lifecycle_on_secured_clusters_with_least_privilege(
        secured, installed_wheel, tmp_path):
    base = secured.config()
    security = Security(secured.home)
    _refusals(base)

    role_password = secrets.token_urlsafe(16)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:reshard:{role_password}\n")
    pgpass.chmod(0o600)
    clusters = {}
    for name, c in base.clusters.items():
        with psycopg.connect(c.dsn, autocommit=True) as conn:  # the stack's superuser, over TLS
            conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_owner') THEN "
                         "CREATE ROLE app_owner NOLOGIN; END IF; END $$")
            create_table(conn)
            conn.execute(f"ALTER TABLE {TABLE} OWNER TO app_owner")
            conn.execute(ROLES.read_text())
            conn.execute(f"ALTER ROLE reshard PASSWORD '{role_password}'")
            if name == "source1":
                seed(conn, 3000)
        dsn = make_conninfo(c.dsn, user="reshard", passfile=str(pgpass))
        clusters[name] = replace(c, dsn=dsn, connect_dsn=dsn)
    with psycopg.connect(make_conninfo(base.control_dsn, dbname="postgres"), autocommit=True) as conn:
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reshard_control') THEN "
                     "CREATE ROLE reshard_control LOGIN; END IF; END $$")
        conn.execute("ALTER DATABASE reshard OWNER TO reshard_control")
    config = replace(base, path=None, clusters=clusters,
                     control_dsn=make_conninfo(base.control_dsn, user="reshard_control"))
    cfg = tmp_path / "reshard.yaml"
    write_config(config, cfg)
    before, after = demo_maps(TARGETS)
    (tmp_path / "before.yaml").write_text(yaml.safe_dump(before))
    (tmp_path / "after.yaml").write_text(yaml.safe_dump(after))

    work = tmp_path / "elsewhere"  # not the checkout
    work.mkdir()
    user_env = {k: v for k, v in os.environ.items() if k != CHECK_ENV}
    outputs: list[str] = []

    def run(*args: str) -> dict:
        out = subprocess.run([str(installed_wheel.reshard), "--config", str(cfg), "--progress", "plain", *args,
                              "--json"], cwd=work, env=user_env, capture_output=True, text=True, timeout=300)
        outputs.append(out.stdout + out.stderr)
        assert out.returncode == 0, (args, out.stderr[-3000:])
        return json.loads(out.stdout)

    name = "secured"
    run("start", name, "--to", str(tmp_path / "after.yaml"), "--from", str(tmp_path / "before.yaml"))
    with psycopg.connect(clusters["source1"].dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {TABLE} SET balance = balance + 1 WHERE id <= 500")
        conn.execute(f"DELETE FROM {TABLE} WHERE id BETWEEN 501 AND 550")
    apply_log = tmp_path / "apply.log"
    applier = subprocess.Popen([str(installed_wheel.reshard), "--config", str(cfg), "--progress", "plain", "apply",
                                name, "--metrics-port", "0"], cwd=work, env=user_env,
                               stdout=open(apply_log, "wb"), stderr=subprocess.STDOUT)
    connector_configs: list[dict] = []
    try:
        run("wait", name)
        assert run("verify", name)["equal"] is True
        cut = run("cutover", name)
        assert cut["outcome"] == "done", cut
        client = ConnectClient(base.connect)
        connector_configs = [client.config(c) or {} for c in client.connectors()]
        assert len(connector_configs) == 1 + len(TARGETS)  # forward, and a reverse stream per target
        with psycopg.connect(clusters["target1"].dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE {TABLE} SET owner = 'after-cutover' WHERE id IN "
                         f"(SELECT id FROM {TABLE} ORDER BY id LIMIT 5)")
        run("wait", name)
        back = run("rollback", name)
        assert back["outcome"] == "done", back
    finally:
        applier.send_signal(signal.SIGTERM)
        applier.wait(timeout=60)
    assert applier.returncode == 0, apply_log.read_text()[-3000:]
    with psycopg.connect(clusters["source1"].dsn) as conn:
        assert conn.execute(f"SELECT count(*) FROM {TABLE} WHERE owner = 'after-cutover'").fetchone()[0] == 5
    run("abort", name, "--yes")

    # no secret in a connector config, a log, or an output
    words = {k: security.password(k) for k in ("kafka", "connect", "postgres", "store")}
    words["reshard role"] = role_password
    for c in connector_configs:
        assert c["database.password"].startswith("${file:"), c
        assert c["database.sslmode"] == "verify-full"
    texts = {"connector configs": json.dumps(connector_configs), "apply.log": apply_log.read_text(),
             "command outputs": "\n".join(outputs)}
    for log in [*secured.home.rglob("*.log"), *secured.home.rglob("*.out")]:
        texts[str(log)] = log.read_text(errors="replace")
    leaks = [(what, where) for what, secret in words.items() for where, text in texts.items() if secret in text]
    assert not leaks, leaks
