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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reshard.errors import ConfigError
from reshard.secrets import REFERENCE_PATTERN, resolve
from reshard.validation import describe_errors

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
    # how the Debezium connector gets the password: a Kafka Connect config-provider reference
    # (``${file:/path:key}``, ``${env:VAR}``) resolved on the Connect worker, never the secret
    connect_password: str | None = None
    # extra or changed Debezium connector properties for connectors capturing this cluster
    connector: dict[str, str] = field(default_factory=dict)

    def params(self, for_connect: bool = False) -> dict[str, str]:
        return {k: str(v) for k, v in conninfo_to_dict(self.connect_dsn if for_connect else self.dsn).items()}

    @property
    def dbname(self) -> str:
        return self.params().get("dbname", "postgres")

    def hosts(self, for_connect: bool = False) -> list[tuple[str, str]]:
        """The (host, port) pairs the DSN lists, in its order: the primary and its standbys."""
        return dsn_hosts(self.connect_dsn if for_connect else self.dsn)

    def replication_dsn(self) -> str:
        """A walsender connection on the same database (for CREATE_REPLICATION_SLOT)."""
        return make_conninfo(self.dsn, replication="database")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str
    partitions: int = 4
    replication_factor: int = 1
    schema_registry_url: str | None = None  # Confluent-compatible API (the embedded stack's Apicurio)
    format: str = "avro"  # how Debezium encodes change events: avro (needs the registry) | json
    # the registry as the Connect workers reach it, when not as reshard does (containers)
    connect_schema_registry_url: str | None = None
    # librdkafka settings for every client reshard creates (SASL, TLS); secrets as references
    client: dict[str, str] = field(default_factory=dict)

    def client_settings(self) -> dict[str, str]:
        """``client`` with its secret references resolved (only when a client is built)."""
        return {k: resolve(v, f"kafka.client.{k}") if k in SECRET_CLIENT_KEYS else v for k, v in self.client.items()}

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
    # a directory the Connect worker reads through its ``file`` config provider: reshard writes
    # each cluster's password there (mode 600) and puts only a reference into the connector
    secrets_dir: str | None = None
    username: str | None = None  # HTTP basic auth on the REST API
    password: str | None = None  # a reference, resolved when the client is built
    ca_file: str | None = None  # the CA that signed an https:// REST API's certificate
    cert_file: str | None = None  # a client certificate, when the REST API asks for one
    key_file: str | None = None

    def basic_auth(self) -> tuple[str, str] | None:
        if not self.username:
            return None
        return self.username, resolve(self.password, "connect.password") if self.password else ""


@dataclass(frozen=True)
class Config:
    path: Path | None
    control_dsn: str
    clusters: dict[str, ClusterConfig]
    kafka: KafkaConfig
    connect: ConnectConfig
    chosen_by: str = ""  # which rule of PRECEDENCE picked the file (load_config)

    def cluster(self, name: str) -> ClusterConfig:
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise ConfigError(f"unknown cluster {name!r} (reshard.yaml defines: {known})") from None

    def to_dict(self) -> dict[str, Any]:
        clusters: dict[str, Any] = {}
        for c in self.clusters.values():
            entry: dict[str, Any] = {"dsn": c.dsn}
            if c.connect_password:
                entry["connect_password"] = c.connect_password
            if c.connect_dsn != c.dsn:
                entry["connect_dsn"] = c.connect_dsn
            if c.connector:
                entry["connector"] = dict(c.connector)
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
                **({"client": dict(self.kafka.client)} if self.kafka.client else {}),
            },
            "connect": {"url": self.connect.url, **({} if self.connect.echo_filter else {"echo_filter": False}),
                        **{k: getattr(self.connect, k) for k in CONNECT_OPTIONAL if getattr(self.connect, k)}},
        }


CONNECT_OPTIONAL = ("secrets_dir", "username", "password", "ca_file", "cert_file", "key_file")
# librdkafka settings that hold a secret: reshard.yaml gives them as references
SECRET_CLIENT_KEYS = frozenset({"sasl.password", "ssl.key.password", "ssl.keystore.password",
                                "sasl.oauthbearer.client.secret", "ssl.key.pem"})
# librdkafka settings reshard sets itself, per client
RESERVED_CLIENT_KEYS = frozenset({"bootstrap.servers", "group.id", "enable.auto.commit", "auto.offset.reset",
                                  "enable.auto.offset.store", "isolation.level", "logger", "client.id"})
# Debezium connector properties reshard's correctness depends on (what it captures, from
# where, how the applier decodes it, where the drain proof reads): not overridable per cluster
OWNED_CONNECTOR_KEYS = frozenset({
    "name", "connector.class", "tasks.max", "database.hostname", "database.port", "database.user",
    "database.password", "database.dbname", "topic.prefix", "plugin.name", "slot.name", "publication.name",
    "publication.autocreate.mode", "slot.drop.on.stop", "snapshot.mode", "table.include.list",
    "decimal.handling.mode", "interval.handling.mode", "binary.handling.mode", "time.precision.mode",
    "tombstones.on.delete", "skipped.operations", "topic.heartbeat.prefix", "errors.tolerance",
    "producer.override.acks",
})
OWNED_CONNECTOR_PREFIXES = ("key.converter", "value.converter", "transforms", "predicates", "column.",
                            "message.key.columns", "table.", "schema.")


def dsn_hosts(dsn: str) -> list[tuple[str, str]]:
    """The (host, port) pairs a DSN lists (libpq's rules: one port for all, or one per host)."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    names = params.get("host", "127.0.0.1").split(",")
    ports = params.get("port", "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(names)
    if len(ports) != len(names):
        raise ValueError(f"the DSN lists {len(names)} host(s) and {len(ports)} port(s)")
    return list(zip(names, ports, strict=True))


def _dsn(value: str) -> str:
    try:
        conninfo_to_dict(value)
    except Exception as exc:  # psycopg raises ProgrammingError for bad conninfo
        raise ValueError(f"invalid DSN {value!r}: {exc}") from None
    return value


def _http(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


def _cluster_name(value: str) -> str:
    try:
        return check_name("cluster", value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


Dsn = Annotated[str, AfterValidator(_dsn), Field(description="a libpq connection string or URI")]
HttpUrl = Annotated[str, AfterValidator(_http)]
ProviderRef = Annotated[str, Field(pattern=r"^\$\{[A-Za-z0-9_]+:[^}]+\}$")]
ClusterName = Annotated[str, AfterValidator(_cluster_name)]


class _Section(BaseModel):
    """Every section refuses keys it does not know: a typo is an error, not a default."""
    model_config = ConfigDict(extra="forbid", strict=True)


class ControlSection(_Section):
    dsn: Dsn = Field(description="the control database")


class ClusterSection(_Section):
    dsn: Dsn = Field(description="how reshard reaches this cluster")
    connect_dsn: Dsn | None = Field(None, description="how Kafka Connect (Debezium) reaches it, if different")
    connect_password: ProviderRef | None = Field(
        None, description="the password as Debezium gets it: a Kafka Connect config-provider reference resolved on "
                          "the worker, e.g. ${file:/etc/kafka/secrets/pg.properties:source1} or ${env:SOURCE1_PGPASSWORD}")
    connector: dict[str, str] = Field(
        default_factory=dict, description="extra Debezium connector properties for this cluster's connectors "
                                          "(e.g. database.tcpKeepAlive, max.batch.size); those reshard relies on "
                                          "cannot be changed")

    @field_validator("connector")
    @classmethod
    def _connector(cls, connector: dict[str, str]) -> dict[str, str]:
        owned = sorted(k for k in connector if k in OWNED_CONNECTOR_KEYS or k.startswith(OWNED_CONNECTOR_PREFIXES))
        if owned:
            raise ValueError(f"{', '.join(owned)} set by reshard and relied on (what is captured, how it is "
                             "encoded, where the drain proof reads); only other Debezium properties can be added "
                             "or changed")
        return connector

    @model_validator(mode="after")
    def _standbys(self) -> ClusterSection:
        """A DSN that lists a primary and its standbys must reach the primary, whichever it is now."""
        listed = dsn_hosts(self.dsn)
        if len(listed) > 1 and conninfo_to_dict(self.dsn).get("target_session_attrs") not in ("read-write", "primary"):
            raise ValueError("dsn lists several hosts (a primary and its standbys): add target_session_attrs=read-write "
                             "so reshard's sessions reach the primary, whichever host it is after a failover")
        if self.connect_dsn and len(dsn_hosts(self.connect_dsn)) not in (1, len(listed)):
            raise ValueError(f"connect_dsn lists {len(dsn_hosts(self.connect_dsn))} hosts: list one (a name that "
                             f"follows the primary) or the dsn's {len(listed)}, in the same order")
        return self


class KafkaSection(_Section):
    bootstrap_servers: str = Field(min_length=1)
    partitions: int = Field(4, ge=1, description="partitions per table topic: the applier's unit of parallelism")
    replication_factor: int = Field(1, ge=1)
    format: Literal["avro", "json"] = Field("avro", description="how Debezium encodes change events")
    schema_registry_url: HttpUrl | None = Field(
        None, description="the registry's Confluent-compatible API (Apicurio: …/apis/ccompat/v7); avro needs it")
    connect_schema_registry_url: HttpUrl | None = Field(
        None, description="the registry as the Connect workers reach it, if different")
    client: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="librdkafka settings for every Kafka client reshard creates, e.g. security.protocol: SASL_SSL, "
                    "sasl.mechanism: SCRAM-SHA-512, sasl.username, sasl.password: ${env:KAFKA_PASSWORD}, "
                    "ssl.ca.location; secrets (sasl.password, ssl.key.password, ...) as ${env:VAR} or "
                    "${file:/path:key} references")

    @field_validator("client")
    @classmethod
    def _client(cls, client: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        reserved = sorted(set(client) & RESERVED_CLIENT_KEYS)
        if reserved:
            raise ValueError(f"{', '.join(reserved)} set by reshard per client"
                             + (" (use kafka.bootstrap_servers)" if "bootstrap.servers" in reserved else ""))
        for key in sorted(set(client) & SECRET_CLIENT_KEYS):
            value = client[key]
            if not (isinstance(value, str) and re.match(REFERENCE_PATTERN, value)):
                raise ValueError(f"{key} holds a secret: give a reference, ${{env:VAR}} or "
                                 "${file:/path:key}, not the secret itself")
        return client

    @model_validator(mode="after")
    def _registry(self) -> KafkaSection:
        if self.format == "avro" and not self.schema_registry_url:
            raise ValueError("kafka.format avro (the default) needs kafka.schema_registry_url, the registry's "
                             "Confluent-compatible API; set kafka.format: json for a cluster without one")
        for key in ("schema_registry_url", "connect_schema_registry_url"):
            url = getattr(self, key)
            if self.format == "avro" and url and "/apis/ccompat/" not in url:
                raise ValueError(f"kafka.{key} must be an Apicurio Registry's Confluent-compatible API "
                                 f"(…/apis/ccompat/v7), got {url!r}: Debezium writes Avro through the Apicurio "
                                 "converter")
        return self


class ConnectSection(_Section):
    url: HttpUrl = Field(description="the Kafka Connect REST API")
    echo_filter: bool = Field(True, description="drop the other direction's writes in Connect when the worker "
                                                "has reshard's echo-filter plugin")
    secrets_dir: str | None = Field(
        None, description="a directory the Connect worker reads with its `file` config provider: reshard writes each "
                          "cluster's password there (mode 600) and the connector config holds only a reference")
    username: str | None = Field(None, description="HTTP basic auth user for the REST API")
    password: Annotated[str, Field(pattern=REFERENCE_PATTERN)] | None = Field(
        None, description="the basic auth password as ${env:VAR} or ${file:/path:key}")
    ca_file: str | None = Field(None, description="PEM CA bundle that signed an https:// REST API's certificate")
    cert_file: str | None = Field(None, description="PEM client certificate, when the REST API asks for one")
    key_file: str | None = Field(None, description="the client certificate's PEM key")

    @model_validator(mode="after")
    def _auth(self) -> ConnectSection:
        if self.password and not self.username:
            raise ValueError("password needs username")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        return self


class ConfigFile(_Section):
    """reshard.yaml. Published as schemas/reshard.yaml.schema.json (editor completion)."""
    model_config = ConfigDict(extra="forbid", strict=True, title="reshard.yaml")
    control: ControlSection
    clusters: dict[ClusterName, ClusterSection] = Field(min_length=1)
    kafka: KafkaSection
    connect: ConnectSection


def parse_config(data: Any, path: Path | None = None) -> Config:
    where = str(path) if path else "config"
    try:
        f = ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, where, ConfigFile)) from None
    clusters = {name: ClusterConfig(name, c.dsn, c.connect_dsn or c.dsn, c.connect_password, dict(c.connector))
                for name, c in f.clusters.items()}
    k = f.kafka
    # librdkafka takes every value as a string ("true", "5000")
    client = {key: (str(v).lower() if isinstance(v, bool) else str(v)) for key, v in k.client.items()}
    kafka = KafkaConfig(k.bootstrap_servers, k.partitions, k.replication_factor, k.schema_registry_url, k.format,
                        k.connect_schema_registry_url, client)
    cn = f.connect
    return Config(path, f.control.dsn, clusters, kafka,
                  ConnectConfig(cn.url, cn.echo_filter, cn.secrets_dir, cn.username, cn.password, cn.ca_file,
                                cn.cert_file, cn.key_file))


PRECEDENCE = (
    "--config PATH (or $RESHARD_CONFIG), if given: that file and no other",
    "./reshard.yaml in the working directory",
    "the embedded stack's: $RESHARD_HOME/reshard.yaml, else ./.reshard/reshard.yaml",
)


def find_config_path(explicit: str | Path | None = None) -> tuple[Path, str]:
    """The reshard.yaml to use and the rule that chose it (see PRECEDENCE). Note that a
    ./reshard.yaml in the working directory wins over the embedded stack's."""
    candidates: list[tuple[Path, str]] = []
    if explicit:
        by = "$RESHARD_CONFIG" if os.environ.get(CONFIG_ENV) == str(explicit) else "--config"
        candidates.append((Path(explicit), by))
    elif os.environ.get(CONFIG_ENV):  # library callers (the router) honour it too
        candidates.append((Path(os.environ[CONFIG_ENV]), "$RESHARD_CONFIG"))
    else:
        candidates += [(Path.cwd() / "reshard.yaml", "./reshard.yaml in the working directory"),
                       (state_dir() / "reshard.yaml", "the embedded stack's ($RESHARD_HOME or ./.reshard)")]
    for p, by in candidates:
        if p.is_file():
            return p.resolve(), by
    tried = ", ".join(str(p) for p, _ in candidates)
    raise ConfigError(
        f"no reshard.yaml found (tried {tried}); run `reshard stack up` to create the "
        "embedded stack and its config, or pass --config"
    )


def load_config(explicit: str | Path | None = None) -> Config:
    path, by = find_config_path(explicit)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return replace(parse_config(data, path), chosen_by=by)


def write_config(config: Config, path: Path) -> None:
    header = (
        "# Written by `reshard stack up` for the embedded stack. The same format points\n"
        "# reshard at external clusters, Kafka and Connect (see examples/reshard.compose.yaml).\n"
    )
    path.write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
