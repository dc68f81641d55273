"""The embedded Kafka Connect worker (distributed mode) with the Debezium plugin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reshard.config import ConnectConfig
from reshard.errors import ReshardError
from reshard.kafka.connect_client import ConnectClient
from reshard.stack.artifacts import JvmArtifacts
from reshard.stack.kafka import java_argv, write_log4j
from reshard.stack.process import ProcessRecord, spawn, wait_healthy
from reshard.stack.security import CONNECT_USER, Security

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
    security: Security | None = None  # secured mode: SASL_SSL to Kafka, https and basic auth

    @property
    def url(self) -> str:
        return f"{'https' if self.security else 'http'}://127.0.0.1:{self.port}"

    def client_config(self) -> ConnectConfig:
        """How reshard.yaml's ``connect`` section reaches this worker."""
        sec = self.security
        if sec is None:
            return ConnectConfig(self.url, secrets_dir=str(self.home.parent / "secrets"))
        return ConnectConfig(self.url, secrets_dir=str(sec.secrets), username=CONNECT_USER,
                             password=sec.reference("connect"), ca_file=str(sec.ca))

    @property
    def log(self) -> Path:
        return self.home / "connect.log"

    def init(self, art: JvmArtifacts) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        write_log4j(self.home / "log4j2.properties", self.log)
        sec = self.security
        secured: list[str] = []
        if sec is not None:  # the worker's own clients, its connectors' producers, admin clients
            secured = [*sec.java_client(), *sec.java_client("producer."), *sec.java_client("consumer."),
                       *sec.java_client("admin."), *sec.connect_rest(self.home), "rest.advertised.listener=https"]
        props = self.home / "connect.properties"
        props.touch(mode=0o600)  # secured mode: it holds the SCRAM and keystore passwords
        props.write_text("\n".join([
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
            f"listeners={self.url}",
            "rest.advertised.host.name=127.0.0.1",
            f"rest.advertised.port={self.port}",
            f"plugin.path={art.plugin_path}",
            "plugin.discovery=hybrid_warn",
            "connector.client.config.override.policy=All",
            # connector configs carry references, never secrets: ${file:<path>:<key>}, ${env:<VAR>}
            "config.providers=file,env",
            "config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider",
            "config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider",
            *secured,
            "",
        ]))

    def start(self, art: JvmArtifacts) -> ProcessRecord:
        jaas = (f"-Djava.security.auth.login.config={self.home / 'rest-jaas.conf'}",) if self.security else ()
        argv = java_argv(art, self.home / "log4j2.properties", "1g",
                         "org.apache.kafka.connect.cli.ConnectDistributed", str(self.home / "connect.properties"),
                         jvm_opts=jaas)
        return spawn(argv, self.log.with_suffix(".out"), cwd=self.home)

    def plugins(self, timeout: float = 3.0) -> list[str]:
        return ConnectClient(self.client_config(), timeout=timeout).plugins()

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
            return isinstance(ConnectClient(self.client_config(), timeout=3.0).connectors(), list)
        except (ReshardError, OSError, ValueError):
            return False

    def wait_ready(self, rec: ProcessRecord, timeout: float = 180.0) -> None:
        wait_healthy(rec, self.healthy, self.log, "Kafka Connect",
                     f"Kafka Connect did not list the Debezium plugin ({DEBEZIUM_CLASS})", timeout)
