"""docker-compose.yml cannot be run here (no Docker engine), so what reshard relies on in
it is checked by reading it: the Debezium image's own offset-flush variable, healthchecks
and healthy dependencies, loopback-only ports that examples/reshard.compose.yaml points
at, and images at the versions connectors/pom.xml pins."""

import json
import re
from pathlib import Path

import yaml
from psycopg.conninfo import conninfo_to_dict

from reshard.config import parse_config
from reshard.secrets import read_properties

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
EXAMPLE = parse_config(yaml.safe_load((REPO / "examples/reshard.compose.yaml").read_text()))


def _pinned(name: str) -> str:
    text = (REPO / "connectors/pom.xml").read_text()
    return re.search(rf"<{name}>([^<]+)</{name}>", text).group(1)


def test_the_slot_confirms_within_a_cutover_budget():
    env = SERVICES["connect"]["environment"]
    # the image's entrypoint overwrites CONNECT_OFFSET_FLUSH_INTERVAL_MS from this one (default 60 s)
    assert "CONNECT_OFFSET_FLUSH_INTERVAL_MS" not in env
    assert int(env["OFFSET_FLUSH_INTERVAL_MS"]) <= 1000


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies():
    assert {"control", "source1", "target1", "target2", "kafka", "connect", "registry"} <= set(SERVICES)
    for name, svc in SERVICES.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must say condition: service_healthy"
        for dep, cond in deps.items():
            assert dep in SERVICES and cond == {"condition": "service_healthy"}, (name, dep, cond)
    assert set(SERVICES["connect"]["depends_on"]) == {"kafka", "registry"}


def test_ports_are_loopback_only_and_the_example_config_points_at_them():
    published = {}
    for name, svc in SERVICES.items():
        for p in svc.get("ports", []):
            host, port, _inner = p.split(":")
            assert host == "127.0.0.1", f"{name} publishes {p} beyond loopback"
            published[name] = int(port)
    assert int(conninfo_to_dict(EXAMPLE.control_dsn)["port"]) == published["control"]
    for name, c in EXAMPLE.clusters.items():
        assert int(c.params()["port"]) == published[name]
        assert c.params(for_connect=True)["host"] == name  # Debezium reaches it by service name
    assert EXAMPLE.kafka.bootstrap_servers == f"127.0.0.1:{published['kafka']}"
    assert EXAMPLE.connect.url == f"http://127.0.0.1:{published['connect']}"
    assert EXAMPLE.kafka.schema_registry_url.startswith(f"http://127.0.0.1:{published['registry']}/")


def test_images_are_the_versions_the_embedded_stack_pins():
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{_pinned('kafka.version')}"
    assert SERVICES["connect"]["image"] == f"quay.io/debezium/connect:{_pinned('debezium.version')}"
    assert SERVICES["registry"]["image"] == f"quay.io/apicurio/apicurio-registry:{_pinned('apicurio.registry.version')}"


def test_connector_passwords_come_from_the_workers_config_provider_not_the_config():
    """The compose path's first migration used to stop at exit 3 (a DSN password and nowhere to
    put it): now no password is in the example, each connector's is a reference the connect
    container resolves from a mounted file, and that file answers it."""
    from reshard.kafka.debezium_login import connect_password

    env = SERVICES["connect"]["environment"]
    providers = env["CONNECT_CONFIG_PROVIDERS"].split(",")
    assert "file" in providers and env["CONNECT_CONFIG_PROVIDERS_FILE_CLASS"].endswith(".FileConfigProvider")
    mounts = dict(v.rsplit(":", 1)[0].split(":") for v in SERVICES["connect"]["volumes"])
    text = (REPO / "examples/reshard.compose.yaml").read_text()
    assert "password=" not in text
    for name in ("source1", "target1", "target2"):
        ref = connect_password(EXAMPLE, name)  # a reference: nothing is connected to or written
        path, key = re.fullmatch(r"\$\{file:(.+):(\w+)\}", ref).groups()
        host_dir = next(h for h, inside in mounts.items() if path.startswith(inside + "/"))
        props = read_properties(REPO / host_dir / path.rsplit("/", 1)[1])
        assert props[key] == SERVICES[name]["environment"]["POSTGRES_PASSWORD"]


def _config(path: Path, pgpassword: str | None):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RESHARD_CONFIG", "RESHARD_HOME", "PGPASSWORD")}
    if pgpassword:
        env["PGPASSWORD"] = pgpassword
    return subprocess.run([sys.executable, "-m", "reshard.cli", "--config", str(path), "config", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_reshard_config_passes_the_example_and_reports_what_start_would_refuse(tmp_path):
    out = _config(REPO / "examples/reshard.compose.yaml", "reshard")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["valid"] and {c["cluster"] for c in doc["checks"]} == {"source1", "target1", "target2"}
    assert all(c["result"] == "ok" and "/etc/reshard-secrets/" in c["detail"] for c in doc["checks"])
    # the example as it was: passwords in the DSNs and no connect_password -> every cluster named, exit 3
    old = yaml.safe_load((REPO / "examples/reshard.compose.yaml").read_text())
    for c in old["clusters"].values():
        del c["connect_password"]
        c["dsn"] += " password=reshard"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    out = _config(tmp_path / "old.yaml", None)
    assert out.returncode == 3, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert not doc["valid"]
    assert sorted(c["cluster"] for c in doc["checks"] if c["result"] == "fail") == ["source1", "target1", "target2"]
    assert "reshard will not write it into the Debezium connector's config" in doc["checks"][0]["detail"]
    # a file reference the worker cannot read (relative: it is resolved on the worker's filesystem)
    rel = yaml.safe_load((REPO / "examples/reshard.compose.yaml").read_text())
    rel["clusters"]["source1"]["connect_password"] = "${file:examples/compose/secrets/postgres.properties:password}"
    (tmp_path / "rel.yaml").write_text(yaml.safe_dump(rel))
    out = _config(tmp_path / "rel.yaml", "reshard")
    assert out.returncode == 3 and "give an absolute path" in out.stdout
