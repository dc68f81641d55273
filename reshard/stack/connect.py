"""The embedded Kafka Connect worker (distributed mode) with the Debezium plugin."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from reshard.stack.artifacts import JvmArtifacts
from reshard.stack.kafka import java_argv, write_log4j
from reshard.stack.process import ProcessRecord, spawn, wait_healthy

DEBEZIUM_CLASS = "io.debezium.connector.postgresql.PostgresConnector"

# offset.flush.interval.ms bounds how soon a change Debezium produced is reflected in
# the slot's confirmed_flush_lsn (Connect commits source offsets only for records Kafka
# acknowledged, then Debezium confirms that LSN to the slot). reshard's catch-up and
# drain proofs wait on that LSN, and the drain is inside the cutover's write pause, so
# the embedded worker flushes twenty times a second instead of the default once a minute.
OFFSET_FLUSH_MS = 50


@dataclass
class ConnectWorker:
    home: Path
    port: int
    bootstrap: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "connect.log"

    def init(self, art: JvmArtifacts) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        write_log4j(self.home / "log4j2.properties", self.log)
        (self.home / "connect.properties").write_text("\n".join([
            f"bootstrap.servers={self.bootstrap}",
            "group.id=reshard-connect",
            "key.converter=org.apache.kafka.connect.json.JsonConverter",
            "value.converter=org.apache.kafka.connect.json.JsonConverter",
            "config.storage.topic=_reshard_connect_configs",
            "offset.storage.topic=_reshard_connect_offsets",
            "status.storage.topic=_reshard_connect_status",
            "config.storage.replication.factor=1",
            "offset.storage.replication.factor=1",
            "status.storage.replication.factor=1",
            f"offset.flush.interval.ms={OFFSET_FLUSH_MS}",
            f"listeners=http://127.0.0.1:{self.port}",
            "rest.advertised.host.name=127.0.0.1",
            f"rest.advertised.port={self.port}",
            f"plugin.path={art.plugin_path}",
            "plugin.discovery=hybrid_warn",
            "connector.client.config.override.policy=All",
            # connector configs carry references, never secrets: ${file:<path>:<key>}, ${env:<VAR>}
            "config.providers=file,env",
            "config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider",
            "config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider",
            "",
        ]))

    def start(self, art: JvmArtifacts) -> ProcessRecord:
        argv = java_argv(art, self.home / "log4j2.properties", "1g",
                         "org.apache.kafka.connect.cli.ConnectDistributed", str(self.home / "connect.properties"))
        return spawn(argv, self.log.with_suffix(".out"), cwd=self.home)

    def plugins(self, timeout: float = 3.0) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/connector-plugins", timeout=timeout) as resp:
            return [p["class"] for p in json.load(resp)]

    def configured_bootstrap(self) -> str | None:
        """The broker address the running worker was started with (its properties file)."""
        try:
            for line in (self.home / "connect.properties").read_text().splitlines():
                if line.startswith("bootstrap.servers="):
                    return line.split("=", 1)[1].strip()
        except OSError:
            return None
        return None

    def healthy(self) -> bool:
        try:
            if DEBEZIUM_CLASS not in self.plugins():
                return False
            with urllib.request.urlopen(f"{self.url}/connectors", timeout=3.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, rec: ProcessRecord, timeout: float = 180.0) -> None:
        wait_healthy(rec, self.healthy, self.log, "Kafka Connect",
                     f"Kafka Connect did not list the Debezium plugin ({DEBEZIUM_CLASS})", timeout)
