"""Debezium connectors of a migration's streams, rendered from connectors/.

Topics are created up front with the migration's partition count (not left to
broker auto-creation, which may be off in production and gives one partition), so
the applier can subscribe to an exact list from its first poll.
"""

from __future__ import annotations

import json
from importlib import resources
from string import Template

from reshard.config import Config
from reshard.kafka.admin import KafkaAdmin
from reshard.kafka.connect_client import ConnectClient
from reshard.kafka.debezium_login import address, connect_password, login
from reshard.kafka.streams import Stream

TEMPLATE = "debezium-postgres.json"  # in reshard.connectors (connectors/ in the repository)
HEARTBEAT_MS = 50
AVRO_CONVERTER = "io.apicurio.registry.utils.converter.AvroConverter"
# Apicurio's converter resolving each table version's schema once (connectors/apicurio-converter)
REUSING_AVRO_CONVERTER = "dev.reshard.connect.ReusingAvroConverter"
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


def converters(config: Config, reuse: bool = False) -> dict[str, str]:
    """How the connector encodes keys and values. JSON: the template's JsonConverter.
    Avro: Apicurio's converter, registering each table version's schema (subject
    ``<topic>-key`` / ``<topic>-value``) and writing the Confluent wire format (magic
    byte, 4-byte content id), which reshard and any Confluent-compatible consumer read.
    ``reuse`` (the worker has it): reshard's subclass of it, which resolves each schema once
    instead of once per record (same bytes on the topic, a third less CPU in Connect)."""
    if config.kafka.format != "avro":
        return {}
    out: dict[str, str] = {}
    for side in ("key", "value"):
        out[f"{side}.converter"] = REUSING_AVRO_CONVERTER if reuse else AVRO_CONVERTER
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


def render(config: Config, stream: Stream, tables: list[str], template: str = TEMPLATE,
           filter_echoes: bool = False, password: str = "", at: tuple[str, str] | None = None,
           reuse_schemas: bool = False) -> dict[str, str]:
    """The connector's config. ``password`` is what connect_password returned: a reference;
    ``at`` the (host, port) to capture from (``address``; connect_dsn's first by default).
    The cluster's ``connector`` properties from reshard.yaml come last (config validation
    keeps them off the properties reshard relies on)."""
    cluster = config.cluster(stream.cluster)
    db = login(config, stream.cluster, password, at)
    values = {
        "hostname": db["database.hostname"],
        "port": db["database.port"],
        "user": db["database.user"],
        "password": password,
        "dbname": db["database.dbname"],
        "topic_prefix": stream.prefix,
        "slot": stream.slot,
        "publication": stream.publication,
        "tables": ",".join([*tables, "reshard.heartbeat"]),
        "heartbeat_ms": str(HEARTBEAT_MS),
        "heartbeat_prefix": "reshard-heartbeat",
    }
    raw = json.loads(resources.files("reshard.connectors").joinpath(template).read_text())
    out = {k: Template(str(v)).substitute(values) for k, v in raw.items() if not k.startswith("__")}
    avro = converters(config, reuse_schemas)
    if avro:  # the template's JSON converter settings do not apply to another converter
        out = {k: v for k, v in out.items() if not k.startswith(("key.converter", "value.converter"))}
    return {**out, **db, **avro, **(echo_filter(stream) if filter_echoes else {}), **cluster.connector}


def ensure_connector(config: Config, stream: Stream, tables: list[str], wait: bool = True) -> list[str]:
    """Create the stream's topics and register (or re-assert) its connector; returns data topics."""
    topics = [stream.topic(t) for t in tables]
    admin = KafkaAdmin(config.kafka)
    admin.ensure_topics(topics, config.kafka.partitions, config.kafka.replication_factor)
    admin.ensure_topics(stream.heartbeat_topics, 1, config.kafka.replication_factor)
    client = ConnectClient(config.connect)
    loadable = client.loadable()
    wanted = render(config, stream, tables, filter_echoes=config.connect.echo_filter and ECHO_PREDICATE in loadable,
                    password=connect_password(config, stream.cluster), at=address(config, stream.cluster),
                    reuse_schemas=REUSING_AVRO_CONVERTER in loadable)
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
