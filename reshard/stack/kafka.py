"""The embedded single-node Kafka broker (KRaft: broker and controller in one JVM)."""

from __future__ import annotations

import base64
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from reshard.config import KafkaConfig
from reshard.errors import StackError
from reshard.kafka.admin import client_conf
from reshard.stack.artifacts import JvmArtifacts
from reshard.stack.process import ProcessRecord, spawn, wait_healthy
from reshard.stack.security import Security

LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %X{{connector.context}}%m (%c) [%t]%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = {max_mb}MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = {keep}
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.connect.name = org.apache.kafka.connect
logger.connect.level = INFO
logger.sourcetask.name = org.apache.kafka.connect.runtime.WorkerSourceTask
logger.sourcetask.level = WARN
logger.rest.name = org.apache.kafka.connect.runtime.rest.RestServer
logger.rest.level = WARN
logger.debezium.name = io.debezium
logger.debezium.level = INFO
"""
LOG_MAX_MB, LOG_KEEP = 10, 5  # each JVM's log rolls at 10 MB, keeping 5 old files: at most 60 MB


def write_log4j(path: Path, log: Path) -> Path:
    """log4j2 settings: the JVM's log in ``log``, rolled by size, without the chatty loggers
    (Connect's per-commit "Committing offsets" lines, every 50 ms per task, and its REST
    access log). The process's own stdout and stderr (a JVM crash) go beside it, ``.out``.
    Each line names its connector task (Connect's ``connector.context``) and thread: Debezium's
    own lines say neither, and a stalled stream is read from them."""
    path.write_text(LOG4J2.format(log=log, max_mb=LOG_MAX_MB, keep=LOG_KEEP))
    return path


def java_argv(art: JvmArtifacts, log4j: Path, heap: str, main: str, *args: str,
              jvm_opts: tuple[str, ...] = ()) -> list[str]:
    return [
        "java", f"-Xmx{heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}", *jvm_opts, "-cp", art.classpath, main, *args,
    ]


@dataclass
class KafkaBroker:
    home: Path
    port: int
    controller_port: int
    security: Security | None = None  # secured mode: one SASL_SSL listener

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client(self) -> KafkaConfig:
        return KafkaConfig(self.bootstrap, client=self.security.kafka_client() if self.security else {})

    @property
    def log(self) -> Path:
        return self.home / "kafka.log"

    def _properties(self) -> str:
        listener = "SASL_SSL" if self.security else "PLAINTEXT"
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners={listener}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={listener}://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map={listener}:{listener},CONTROLLER:PLAINTEXT",
            f"inter.broker.listener.name={listener}",
            *(self.security.broker_listener() if self.security else []),
            f"log.dirs={self.home / 'data'}",
            "num.partitions=1",
            "auto.create.topics.enable=true",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "",
        ])

    def init(self, art: JvmArtifacts) -> None:
        """Write the config; format the KRaft storage once (a cluster id is forever)."""
        self.home.mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        props.touch(mode=0o600)  # secured mode: it holds the keystore's and SCRAM's passwords
        props.write_text(self._properties())
        log4j = write_log4j(self.home / "log4j2.properties", self.log)
        if (self.home / "data" / "meta.properties").is_file():
            return
        # a random id starting with "-" would be read as an option by StorageTool (about 1 in 64)
        cluster_id = "r" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:]
        proc = subprocess.run(
            java_argv(art, log4j, "256m", "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                      *(self.security.scram_format_args() if self.security else [])),
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def start(self, art: JvmArtifacts) -> ProcessRecord:
        argv = java_argv(art, self.home / "log4j2.properties", "768m", "kafka.Kafka", str(self.home / "server.properties"))
        return spawn(argv, self.log.with_suffix(".out"), cwd=self.home)

    def healthy(self, timeout: float = 3.0) -> bool:
        try:
            md = AdminClient(client_conf(self.client)).list_topics(timeout=timeout)
            return bool(md.brokers)
        except Exception:
            return False

    def wait_ready(self, rec: ProcessRecord, timeout: float = 90.0) -> None:
        wait_healthy(rec, lambda: self.healthy(timeout=2.0), self.log, "Kafka",
                     "Kafka broker not answering metadata requests", timeout)
