"""Debezium connectors of a migration's streams, rendered from connectors/.

Topics are created up front with the migration's partition count (not left to
broker auto-creation, which may be off in production and gives one partition), so
the applier can subscribe to an exact list from its first poll.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from string import Template

import psycopg

from reshard.cluster import failover
from reshard.config import Config
from reshard.errors import ConfigError
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.streams import Stream
from reshard.secrets import connector_password_error

TEMPLATE = "debezium-postgres.json"  # in reshard.connectors (connectors/ in the repository)
HEARTBEAT_MS = 50
AVRO_CONVERTER = "io.apicurio.registry.utils.converter.AvroConverter"
CONVERTER_CHECK_PERIOD_MS = 24 * 3600 * 1000
ECHO_PREDICATE = "dev.reshard.connect.OriginStartsWith"  # connectors/echo-filter


def echo_filter(stream: Stream) -> dict[str, str]:
    """Drop the other direction's writes (echoes) in Connect, before they are produced:
    Kafka's Filter transform with reshard's origin predicate. The applier would skip them
    anyway; this keeps them off Kafka (after a cutover every change would travel twice)."""
    return {
        "transforms": "dropEchoes",
        "transforms.dropEchoes.type": "org.apache.kafka.connect.transforms.Filter",
        "transforms.dropEchoes.predicate": "isEcho",
        "predicates": "isEcho",
        "predicates.isEcho.type": ECHO_PREDICATE,
        "predicates.isEcho.prefix": stream.echo_origin_prefix,
    }


def converters(config: Config) -> dict[str, str]:
    """How the connector encodes keys and values. JSON: the template's JsonConverter.
    Avro: Apicurio's converter, registering each table version's schema (subject
    ``<topic>-key`` / ``<topic>-value``) and writing the Confluent wire format (magic
    byte, 4-byte content id), which reshard and any Confluent-compatible consumer read."""
    if config.kafka.format != "avro":
        return {}
    out: dict[str, str] = {}
    for side in ("key", "value"):
        out[f"{side}.converter"] = AVRO_CONVERTER
        out[f"{side}.converter.apicurio.registry.url"] = config.kafka.apicurio_url
        out[f"{side}.converter.apicurio.registry.auto-register"] = "true"
        # one self-contained schema per table version, not a schema with references to its
        # named parts: any Avro reader can use it as it is (and Apicurio 3.0 fails to store
        # the envelope's twice-used Value record as two references)
        out[f"{side}.converter.apicurio.registry.dereference-schema"] = "true"
        # a schema's id never changes: resolve each once, not again every 30 s (the default
        # check period re-POSTs every table version's schema; once such a POST never got its
        # answer and the task stalled with it, its records unproduced)
        out[f"{side}.converter.apicurio.registry.check-period-ms"] = str(CONVERTER_CHECK_PERIOD_MS)
    return out


# libpq TLS settings of connect_dsn, as the Debezium PostgreSQL connector names them
SSL_SETTINGS = {"sslmode": "database.sslmode", "sslrootcert": "database.sslrootcert",
                "sslcert": "database.sslcert", "sslkey": "database.sslkey"}


def connect_password(config: Config, cluster: str) -> str:
    """What the connector's ``database.password`` holds: a Kafka Connect config-provider
    reference, never the secret (a connector's config is readable by anyone who can reach
    Connect's REST API). The cluster's own ``connect_password`` reference if given; else the
    DSN's password (or libpq's, from .pgpass) written to ``connect.secrets_dir`` (mode 600)
    for the worker's ``file`` provider; "" when the cluster needs no password."""
    c = config.cluster(cluster)
    if c.connect_password:
        return c.connect_password
    secret = c.params(for_connect=True).get("password")
    if not secret:
        with psycopg.connect(c.dsn, connect_timeout=10) as conn:
            secret = conn.info.password  # libpq's: the DSN's, or the password file's (.pgpass)
    if not secret:
        return ""
    if not config.connect.secrets_dir:
        raise ConfigError(connector_password_error(cluster))
    path = Path(config.connect.secrets_dir) / f"{cluster}.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("password=" + secret.replace("\\", "\\\\") + "\n")  # a Java properties value
    os.replace(tmp, path)
    return f"${{file:{path}:password}}"


def address(config: Config, cluster: str) -> tuple[str, str]:
    """The host and port Debezium captures ``cluster`` through: the cluster's primary now when
    its DSN lists standbys too (``database.hostname`` takes one host), else connect_dsn's."""
    c = config.cluster(cluster)
    if len(c.hosts()) == 1:
        return c.hosts(for_connect=True)[0]
    return failover.connect_address(c, failover.locate(c))


def render(config: Config, stream: Stream, tables: list[str], template: str = TEMPLATE,
           filter_echoes: bool = False, password: str = "", at: tuple[str, str] | None = None) -> dict[str, str]:
    """The connector's config. ``password`` is what connect_password returned: a reference;
    ``at`` the (host, port) to capture from (``address``; connect_dsn's first by default).
    The cluster's ``connector`` properties from reshard.yaml come last (config validation
    keeps them off the properties reshard relies on)."""
    cluster = config.cluster(stream.cluster)
    params = cluster.params(for_connect=True)
    host, port = at or cluster.hosts(for_connect=True)[0]
    values = {
        "hostname": host,
        "port": port,
        "user": params.get("user", "postgres"),
        "password": password,
        "dbname": params.get("dbname", "postgres"),
        "topic_prefix": stream.prefix,
        "slot": stream.slot,
        "publication": stream.publication,
        "tables": ",".join([*tables, "reshard.heartbeat"]),
        "heartbeat_ms": str(HEARTBEAT_MS),
        "heartbeat_prefix": "reshard-heartbeat",
    }
    raw = json.loads(resources.files("reshard.connectors").joinpath(template).read_text())
    out = {k: Template(str(v)).substitute(values) for k, v in raw.items() if not k.startswith("__")}
    avro = converters(config)
    if avro:  # the template's JSON converter settings do not apply to another converter
        out = {k: v for k, v in out.items() if not k.startswith(("key.converter", "value.converter"))}
    ssl = {key: params[name] for name, key in SSL_SETTINGS.items() if params.get(name)}
    return {**out, **ssl, **avro, **(echo_filter(stream) if filter_echoes else {}), **cluster.connector}


def ensure_connector(config: Config, stream: Stream, tables: list[str], wait: bool = True) -> list[str]:
    """Create the stream's topics and register (or re-assert) its connector; returns data topics."""
    topics = [stream.topic(t) for t in tables]
    admin = KafkaAdmin(config.kafka)
    admin.ensure_topics(topics, config.kafka.partitions, config.kafka.replication_factor)
    admin.ensure_topics(stream.heartbeat_topics, 1, config.kafka.replication_factor)
    client = ConnectClient(config.connect)
    wanted = render(config, stream, tables,
                    filter_echoes=config.connect.echo_filter and client.has_plugin(ECHO_PREDICATE),
                    password=connect_password(config, stream.cluster), at=address(config, stream.cluster))
    current = client.config(stream.connector)
    if current is None or {k: v for k, v in current.items() if k != "name"} != wanted:
        client.put(stream.connector, wanted)
    if wait:
        client.wait_running(stream.connector, timeout=90)
    return topics


def drop_connector(config: Config, stream: Stream) -> bool:
    return ConnectClient(config.connect).delete(stream.connector)


def drop_streams(config: Config, store, migration: str, streams: list[Stream], tables: list[str]) -> list[str]:
    """Delete the streams' connectors, slots, publications and topics (and forget reverse
    streams in the control database). Idempotent; returns what it did."""
    from reshard.cluster.replication import drop_publication, drop_slot
    from reshard.cluster.session import connect
    from reshard.kafka.streams import Direction

    done: list[str] = []
    for s in streams:
        if drop_connector(config, s):
            done.append(f"deleted connector {s.connector}")
    topics: list[str] = []
    for s in streams:
        with connect(config.cluster(s.cluster).dsn, f"cluster {s.cluster}", autocommit=True) as conn:
            store.forget_slot_origin(migration, s.slot)  # first: a watch must not take the drop for a loss
            if drop_slot(conn, s.slot):
                done.append(f"dropped slot {s.slot} on {s.cluster}")
            if drop_publication(conn, s.publication):
                done.append(f"dropped publication {s.publication} on {s.cluster}")
        topics += [s.topic(t) for t in tables] + s.heartbeat_topics
        if s.direction == Direction.REVERSE:
            store.forget_reverse(migration, s.cluster)
    KafkaAdmin(config.kafka).delete_topics(topics)
    if topics:
        done.append(f"deleted {len(topics)} topic(s)")
    return done
