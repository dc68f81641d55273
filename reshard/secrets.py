"""Secrets reshard's own clients need (Kafka SASL, Connect's REST password), given in
reshard.yaml as references, never as the secret itself.

The syntax is Kafka Connect's config providers', so one file can serve reshard and the
Connect worker: ``${env:VAR}`` reads an environment variable, ``${file:/path:key}`` a
key of a Java properties file. A reference is resolved when a client is built, so
the secret never reaches ``--json`` output, the config reshard prints, or a log.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from reshard.errors import ConfigError

REFERENCE = re.compile(r"^\$\{(?P<provider>env|file):(?P<arg>[^}]+)\}$")
REFERENCE_PATTERN = REFERENCE.pattern


def is_reference(value: str) -> bool:
    return bool(REFERENCE.match(value))


def read_properties(path: Path) -> dict[str, str]:
    """The key=value (or key: value) lines of a Java properties file; no continuation lines."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"^((?:\\.|[^=:\s])+)\s*[=:\s]\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).replace("\\\\", "\\")
    return out


def resolve(value: str, where: str) -> str:
    """The secret a reference names; ``where`` (the config path) is named in errors."""
    m = REFERENCE.match(value)
    if not m:
        raise ConfigError(f"{where}: expected a reference, ${{env:VAR}} or ${{file:/path:key}}, not the secret itself")
    if m["provider"] == "env":
        secret = os.environ.get(m["arg"])
        if secret is None:
            raise ConfigError(f"{where}: environment variable {m['arg']} is not set")
        return secret
    path, sep, key = m["arg"].rpartition(":")
    if not sep or not path:
        raise ConfigError(f"{where}: a file reference is ${{file:/path:key}}, got {value!r}")
    try:
        props = read_properties(Path(path))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if key not in props:
        raise ConfigError(f"{where}: {path} has no key {key!r}")
    return props[key]


def connector_password_error(cluster: str) -> str:
    """Why a cluster's password cannot reach the connector, and the two ways that work."""
    return (f"cluster {cluster} needs a password, and reshard will not write it into the Debezium connector's config "
            f"(anyone who can reach Connect's REST API can read that): set clusters.{cluster}.connect_password to "
            "a Kafka Connect config-provider reference (${file:/path:key} or ${env:VAR}) the Connect worker resolves, "
            "or connect.secrets_dir to a directory the worker's `file` config provider reads")
