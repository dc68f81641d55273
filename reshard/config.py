"""reshard.yaml: where the clusters, the control database, Kafka and Connect are.

One file describes any topology: ``reshard stack up`` writes one for the embedded
stack, ``examples/reshard.compose.yaml`` points at the docker-compose stack, and an
operator writes one for production. Every cluster is addressed by a libpq DSN; when
Kafka Connect reaches a cluster at another address than reshard does (containers,
private networks), ``connect_dsn`` says how Debezium sees it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reshard.errors import ConfigError

CONFIG_ENV = "RESHARD_CONFIG"
HOME_ENV = "RESHARD_HOME"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,23}$")


def state_dir(cwd: Path | None = None) -> Path:
    """The embedded stack's state directory: $RESHARD_HOME, else ./.reshard."""
    env = os.environ.get(HOME_ENV)
    return Path(env).resolve() if env else (cwd or Path.cwd()).resolve() / ".reshard"


def check_name(kind: str, name: str) -> str:
    """Names end up in slot, publication, topic and connector names: keep them plain."""
    if not NAME_RE.match(name):
        raise ConfigError(
            f"{kind} name {name!r} is invalid: use a lowercase letter, then up to 23 "
            "lowercase letters, digits or underscores (names become part of slot, topic and connector names)"
        )
    return name


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    dsn: str
    connect_dsn: str

    def params(self, for_connect: bool = False) -> dict[str, str]:
        return {k: str(v) for k, v in conninfo_to_dict(self.connect_dsn if for_connect else self.dsn).items()}

    @property
    def dbname(self) -> str:
        return self.params().get("dbname", "postgres")

    def replication_dsn(self) -> str:
        """A walsender connection on the same database (for CREATE_REPLICATION_SLOT)."""
        return make_conninfo(self.dsn, replication="database")


FORMATS = ("avro", "json")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str
    partitions: int = 4
    replication_factor: int = 1
    schema_registry_url: str | None = None  # Confluent-compatible API (the embedded stack's Apicurio)
    format: str = "avro"  # how Debezium encodes change events: avro (needs the registry) | json
    # the registry as the Connect workers reach it, when not as reshard does (containers)
    connect_schema_registry_url: str | None = None

    @property
    def apicurio_url(self) -> str:
        """The registry's own API (v3), as the Apicurio converter on Connect reaches it."""
        url = self.connect_schema_registry_url or self.schema_registry_url
        assert url is not None
        return url.rsplit("/apis/", 1)[0] + "/apis/registry/v3"


@dataclass(frozen=True)
class ConnectConfig:
    url: str
    # drop the other direction's writes in Connect (reshard's echo-filter plugin) when the
    # worker has it; false: let them travel and have the applier skip them
    echo_filter: bool = True


@dataclass(frozen=True)
class Config:
    path: Path | None
    control_dsn: str
    clusters: dict[str, ClusterConfig]
    kafka: KafkaConfig
    connect: ConnectConfig
    extra: dict[str, Any] = field(default_factory=dict)

    def cluster(self, name: str) -> ClusterConfig:
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise ConfigError(f"unknown cluster {name!r} (reshard.yaml defines: {known})") from None

    def to_dict(self) -> dict[str, Any]:
        clusters: dict[str, Any] = {}
        for c in self.clusters.values():
            entry: dict[str, str] = {"dsn": c.dsn}
            if c.connect_dsn != c.dsn:
                entry["connect_dsn"] = c.connect_dsn
            clusters[c.name] = entry
        return {
            "control": {"dsn": self.control_dsn},
            "clusters": clusters,
            "kafka": {
                "bootstrap_servers": self.kafka.bootstrap_servers,
                "partitions": self.kafka.partitions,
                "replication_factor": self.kafka.replication_factor,
                **({"schema_registry_url": self.kafka.schema_registry_url} if self.kafka.schema_registry_url else {}),
                "format": self.kafka.format,
                **({"connect_schema_registry_url": self.kafka.connect_schema_registry_url}
                   if self.kafka.connect_schema_registry_url else {}),
            },
            "connect": {"url": self.connect.url, **({} if self.connect.echo_filter else {"echo_filter": False})},
            **self.extra,
        }


def _req(d: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d or d[key] in (None, ""):
        raise ConfigError(f"{where}: missing required key {key!r}")
    return d[key]


def _dsn(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: a DSN must be a string, got {type(value).__name__}")
    try:
        conninfo_to_dict(value)
    except Exception as exc:  # psycopg raises ProgrammingError for bad conninfo
        raise ConfigError(f"{where}: invalid DSN {value!r}: {exc}") from None
    return value


def parse_config(data: Any, path: Path | None = None) -> Config:
    where = str(path) if path else "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    control = _req(data, "control", where)
    control_dsn = _dsn(_req(control, "dsn", f"{where}: control"), f"{where}: control.dsn")
    raw_clusters = _req(data, "clusters", where)
    if not isinstance(raw_clusters, dict):
        raise ConfigError(f"{where}: clusters must be a mapping of name -> {{dsn: ...}}")
    clusters: dict[str, ClusterConfig] = {}
    for name, entry in raw_clusters.items():
        check_name("cluster", str(name))
        dsn = _dsn(_req(entry, "dsn", f"{where}: clusters.{name}"), f"{where}: clusters.{name}.dsn")
        connect_dsn = _dsn(entry.get("connect_dsn", dsn), f"{where}: clusters.{name}.connect_dsn")
        clusters[str(name)] = ClusterConfig(str(name), dsn, connect_dsn)
    k = _req(data, "kafka", where)
    try:
        kafka = KafkaConfig(
            bootstrap_servers=str(_req(k, "bootstrap_servers", f"{where}: kafka")),
            partitions=int(k.get("partitions", 4)),
            replication_factor=int(k.get("replication_factor", 1)),
            schema_registry_url=str(k["schema_registry_url"]).rstrip("/") if k.get("schema_registry_url") else None,
            format=str(k.get("format", FORMATS[0])),
            connect_schema_registry_url=str(k["connect_schema_registry_url"]).rstrip("/")
            if k.get("connect_schema_registry_url") else None,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: kafka: {exc}") from None
    if kafka.schema_registry_url and not kafka.schema_registry_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: kafka.schema_registry_url must start with http:// or https://")
    if kafka.format not in FORMATS:
        raise ConfigError(f"{where}: kafka.format must be one of {', '.join(FORMATS)}, got {kafka.format!r}")
    if kafka.format == "avro" and not kafka.schema_registry_url:
        raise ConfigError(f"{where}: kafka.format avro (the default) needs kafka.schema_registry_url, the "
                          "registry's Confluent-compatible API; set kafka.format: json for a cluster without one")
    for key in ("schema_registry_url", "connect_schema_registry_url"):
        url = getattr(kafka, key)
        if kafka.format == "avro" and url and "/apis/ccompat/" not in url:
            raise ConfigError(f"{where}: kafka.{key} must be an Apicurio Registry's Confluent-compatible API "
                              f"(…/apis/ccompat/v7), got {url!r}: Debezium writes Avro through the Apicurio converter")
    if kafka.partitions < 1 or kafka.replication_factor < 1:
        raise ConfigError(f"{where}: kafka.partitions and kafka.replication_factor must be >= 1")
    c = _req(data, "connect", where)
    url = str(_req(c, "url", f"{where}: connect")).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: connect.url must start with http:// or https://, got {url!r}")
    echo_filter = c.get("echo_filter", True)
    if not isinstance(echo_filter, bool):
        raise ConfigError(f"{where}: connect.echo_filter must be true or false, got {echo_filter!r}")
    extra = {key: v for key, v in data.items() if key not in {"control", "clusters", "kafka", "connect"}}
    return Config(path, control_dsn, clusters, kafka, ConnectConfig(url, echo_filter), extra)


def find_config_path(explicit: str | Path | None = None) -> Path:
    """--config, then $RESHARD_CONFIG, then ./reshard.yaml, then the embedded stack's."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    elif os.environ.get(CONFIG_ENV):
        candidates.append(Path(os.environ[CONFIG_ENV]))
    else:
        candidates += [Path.cwd() / "reshard.yaml", state_dir() / "reshard.yaml"]
    for p in candidates:
        if p.is_file():
            return p
    tried = ", ".join(str(p) for p in candidates)
    raise ConfigError(
        f"no reshard.yaml found (tried {tried}); run `reshard stack up` to create the "
        "embedded stack and its config, or pass --config"
    )


def load_config(explicit: str | Path | None = None) -> Config:
    path = find_config_path(explicit)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, path)


def write_config(config: Config, path: Path) -> None:
    header = (
        "# Written by `reshard stack up` for the embedded stack. The same format points\n"
        "# reshard at external clusters, Kafka and Connect (see examples/reshard.compose.yaml).\n"
    )
    path.write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
