"""docker-compose.yml cannot be run here (no Docker engine), so what reshard relies on in
it is checked by reading it: the Debezium image's own offset-flush variable, healthchecks
and healthy dependencies, loopback-only ports that examples/reshard.compose.yaml points
at, and images at the versions connectors/pom.xml pins."""

import re
from pathlib import Path

import yaml
from psycopg.conninfo import conninfo_to_dict

from reshard.config import parse_config

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
    assert SERVICES["registry"]["image"] == f"quay.io/apicurio/apicurio-registry:{_pinned('apicurio.version')}"
