"""The embedded schema registry: Apicurio Registry 3.0.9 (a Quarkus runner jar).

Its storage is the control PostgreSQL (database ``registry``), not memory, so schema
ids survive a restart and every Avro record in Kafka stays readable. Clients use its
Confluent-compatible API (``/apis/ccompat/v7``); it is ready when that API answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reshard.errors import ReshardError
from reshard.http import Endpoint, HttpClient
from reshard.stack.artifacts import JvmArtifacts
from reshard.stack.process import ProcessRecord, spawn, wait_healthy

REGISTRY_DB = "registry"
CCOMPAT = "/apis/ccompat/v7"


@dataclass
class SchemaRegistry:
    home: Path
    port: int
    pg_port: int  # the control PostgreSQL, which stores the schemas

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CCOMPAT}"

    @property
    def log(self) -> Path:
        return self.home / "registry.log"

    def start(self, art: JvmArtifacts) -> ProcessRecord:
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [
            "java", "-Xmx384m", "-Xms64m", "-XX:+UseG1GC",
            "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
            "-Dapicurio.storage.kind=sql", "-Dapicurio.storage.sql.kind=postgresql",
            f"-Dapicurio.datasource.url=jdbc:postgresql://127.0.0.1:{self.pg_port}/{REGISTRY_DB}",
            "-Dapicurio.datasource.username=postgres", "-Dapicurio.datasource.password=",
            "-jar", str(art.registry_jar),
        ]
        return spawn(argv, self.log, cwd=self.home)

    def subjects(self, timeout: float = 3.0) -> list[str]:
        return HttpClient(Endpoint(self.url, "the schema registry", timeout=timeout)).call("GET", "/subjects")

    def healthy(self) -> bool:
        try:
            return isinstance(self.subjects(), list)
        except ReshardError:
            return False

    def wait_ready(self, rec: ProcessRecord, timeout: float = 120.0) -> None:
        wait_healthy(rec, self.healthy, self.log, "the schema registry", "the schema registry's API did not answer",
                     timeout)
