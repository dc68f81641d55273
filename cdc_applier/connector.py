"""The Debezium connector of one source cluster of one migration, from connectors/.

Topics are created up front with the migration's partition count (not left to
broker auto-creation, which may be off in production and gives one partition), so
the applier can subscribe to an exact list from its first poll.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from reshard.config import Config
from reshard.connect_client import ConnectClient
from reshard.kafka_admin import KafkaAdmin
from reshard.stack.artifacts import REPO_ROOT

TEMPLATE = REPO_ROOT / "connectors" / "debezium-postgres.json"
HEARTBEAT_MS = 200


def connector_name(migration: str, source: str) -> str:
    return f"reshard-{migration}-{source}"


def topic_prefix(migration: str, source: str) -> str:
    return f"reshard.{migration}.{source}"


def data_topic(migration: str, source: str, table: str) -> str:
    return f"{topic_prefix(migration, source)}.{table}"


def heartbeat_topics(migration: str, source: str) -> list[str]:
    """Debezium's heartbeat topic and the topic of reshard's heartbeat table."""
    prefix = topic_prefix(migration, source)
    return [f"reshard-heartbeat.{prefix}", f"{prefix}.reshard.heartbeat"]


def render(config: Config, migration: str, source: str, slot: str, publication: str, tables: list[str],
           template: Path = TEMPLATE) -> dict[str, str]:
    params = config.cluster(source).params(for_connect=True)
    values = {
        "hostname": params.get("host", "127.0.0.1"),
        "port": params.get("port", "5432"),
        "user": params.get("user", "postgres"),
        "password": params.get("password", ""),
        "dbname": params.get("dbname", "postgres"),
        "topic_prefix": topic_prefix(migration, source),
        "slot": slot,
        "publication": publication,
        "tables": ",".join([*tables, "reshard.heartbeat"]),
        "heartbeat_ms": str(HEARTBEAT_MS),
        "heartbeat_prefix": "reshard-heartbeat",
    }
    raw = json.loads(template.read_text())
    return {k: Template(str(v)).substitute(values) for k, v in raw.items() if not k.startswith("__")}


def ensure_connector(config: Config, migration: str, source: str, slot: str, publication: str,
                     tables: list[str]) -> tuple[str, list[str]]:
    """Create topics and register (or re-assert) the connector; returns (name, data topics)."""
    topics = [data_topic(migration, source, t) for t in tables]
    admin = KafkaAdmin(config.kafka.bootstrap_servers)
    admin.ensure_topics(topics, config.kafka.partitions, config.kafka.replication_factor)
    admin.ensure_topics(heartbeat_topics(migration, source), 1, config.kafka.replication_factor)
    name = connector_name(migration, source)
    client = ConnectClient(config.connect.url)
    wanted = render(config, migration, source, slot, publication, tables)
    current = client.config(name)
    if current is None or any(current.get(k) != v for k, v in wanted.items()):
        client.put(name, wanted)
    client.wait_running(name, timeout=90)
    return name, topics
