"""How a Debezium connector logs into a cluster: the host it captures from, the user and
database, TLS, and the password as a Kafka Connect config-provider reference.

Shared by the connectors a migration registers and by the preflight check that asks the
Connect worker to try the same login before anything is created."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from reshard.cluster import failover
from reshard.config import Config
from reshard.errors import ConfigError
from reshard.secrets import connector_password_error

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


def login(config: Config, cluster: str, password: str = "", at: tuple[str, str] | None = None) -> dict[str, str]:
    """The connector's ``database.*`` settings for ``cluster``. ``password`` is what
    connect_password returned (a reference); ``at`` the (host, port) from ``address``
    (connect_dsn's first by default)."""
    c = config.cluster(cluster)
    params = c.params(for_connect=True)
    host, port = at or c.hosts(for_connect=True)[0]
    return {
        "database.hostname": host,
        "database.port": port,
        "database.user": params.get("user", "postgres"),
        "database.password": password,
        "database.dbname": params.get("dbname", "postgres"),
        **{key: params[name] for name, key in SSL_SETTINGS.items() if params.get(name)},
    }
