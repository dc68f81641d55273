"""Fetch the pinned JVM parts (Kafka, Kafka Connect, Debezium, Apicurio) once, into a cache.

``connectors/pom.xml`` (package data ``reshard.connectors`` once installed) pins the
versions; Maven resolves them from Maven Central, and builds the echo filter, into
``$RESHARD_CACHE/jvm/<hash of the POMs and sources>/`` (default ``~/.cache/reshard``). The hash in
the path means a version bump fetches a fresh set instead of mixing jars; a marker
file written last means an interrupted fetch is redone rather than trusted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import requests

from reshard.errors import ReshardError, StackError
from reshard.http import Endpoint, HttpClient

CACHE_ENV = "RESHARD_CACHE"
CONNECTORS = "reshard.connectors"  # connectors/ in the repository, package data once installed
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class JvmArtifacts:
    root: Path

    @property
    def classpath(self) -> str:
        return str(self.root / "lib" / "*")

    @property
    def plugin_path(self) -> Path:
        return self.root / "plugins"

    @property
    def registry_jar(self) -> Path:
        return self.root / "registry" / "quarkus-run.jar"  # Quarkus' fast-jar layout (app/, lib/, quarkus/)


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "reshard"


def build_sources() -> dict[str, bytes]:
    """What the build reads, from the package's data: the POMs and the Java sources (the echo
    filter, the converter), by path relative to connectors/."""
    out: dict[str, bytes] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for entry in node.iterdir():
            rel = f"{prefix}{entry.name}"
            if entry.is_dir():
                if entry.name not in ("target", "__pycache__"):
                    walk(entry, rel + "/")
            elif entry.name == "pom.xml" or entry.name.endswith(".java"):
                out[rel] = entry.read_bytes()

    walk(resources.files(CONNECTORS), "")
    return dict(sorted(out.items()))


def artifacts_dir(sources: dict[str, bytes] | None = None) -> Path:
    """The cache directory of one artifact set: named by a hash of the POMs that pin it
    and of the Java sources built (the echo filter)."""
    h = hashlib.sha256()
    for rel, data in (sources if sources is not None else build_sources()).items():
        h.update(rel.encode() + b"\0" + data)
    return cache_dir() / "jvm" / h.hexdigest()[:12]


CENTRAL = "https://repo1.maven.org/maven2"
# The converter's own jars, at the registry's version: Maven cannot resolve them (see the POMs)
CONVERTER_JARS = (
    "apicurio-registry-utils-converter", "apicurio-registry-avro-serde-kafka",
    "apicurio-registry-serde-kafka-common", "apicurio-registry-serde-common-avro",
    "apicurio-registry-serde-common", "apicurio-registry-schema-resolver", "apicurio-registry-common",
)


PINS = {"kafka": "kafka", "debezium": "debezium", "apicurio": "apicurio.registry", "apicurio_converter": "apicurio"}


def pinned() -> dict[str, str]:
    """The versions ``connectors/pom.xml`` pins (`reshard version`): Kafka, Debezium, the Apicurio
    registry and the Apicurio converter Connect runs."""
    text = (resources.files(CONNECTORS) / "pom.xml").read_text()
    found = {key: re.search(rf"<{re.escape(prop)}\.version>([^<]+)</", text) for key, prop in PINS.items()}
    return {key: m.group(1) for key, m in found.items() if m is not None}


def _apicurio_version(pom: Path, prop: str = "apicurio") -> str:
    m = re.search(rf"<{re.escape(prop)}\.version>([^<]+)</", pom.read_text())
    if m is None:
        raise StackError(f"{pom} pins no {prop}.version")
    return m.group(1)


def fetch_central(group: str, artifact: str, version: str, suffix: str = ".jar") -> Path:
    """One file from Maven Central, SHA-1 checked against Central's, cached in the download
    directory (the same file is never fetched twice)."""
    name = f"{artifact}-{version}{suffix}"
    url = f"{CENTRAL}/{group.replace('.', '/')}/{artifact}/{version}/{name}"
    path = cache_dir() / "downloads" / name
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(name + ".part")
        central = HttpClient(Endpoint(CENTRAL, "Maven Central", timeout=60))
        path_in = url[len(CENTRAL):]
        with central.request("GET", path_in, stream=True) as resp, open(partial, "wb") as out:
            resp.raise_for_status()
            shutil.copyfileobj(resp.raw, out)
        sha1 = central.request("GET", path_in + ".sha1")
        sha1.raise_for_status()
        expected = sha1.text.split()[0].strip()
    except (OSError, ReshardError, requests.HTTPError) as exc:
        raise StackError(f"cannot fetch {url} from Maven Central: {exc}") from None
    actual = hashlib.sha1(partial.read_bytes()).hexdigest()
    if actual != expected:
        partial.unlink()
        raise StackError(f"{url}: SHA-1 {actual} does not match Maven Central's {expected}")
    partial.rename(path)
    return path


def fetch_registry(pom: Path, into: Path) -> None:
    """Apicurio Registry's Quarkus application (quarkus-run.jar, app/, lib/, quarkus/), unpacked."""
    archive = fetch_central("io.apicurio", "apicurio-registry-app", _apicurio_version(pom, "apicurio.registry"),
                            "-all.tar.gz")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")


def fetch_converter(pom: Path, into: Path) -> None:
    """The Apicurio converter's io.apicurio jars, beside the libraries Maven put there."""
    into.mkdir(parents=True, exist_ok=True)
    version = _apicurio_version(pom)
    for artifact in CONVERTER_JARS:
        shutil.copyfile(fetch_central("io.apicurio", artifact, version), into / f"{artifact}-{version}.jar")


REUSE_JAR = "reshard-apicurio-reuse.jar"


def build_converter(sources: Path, plugin_dir: Path, lib: Path) -> None:
    """Compile reshard's subclass of the Apicurio converter (connectors/apicurio-converter/src)
    against the jars beside it, into the converter's plugin directory (it extends classes
    only that directory's class loader has). javac, not Maven: Maven cannot resolve the
    Apicurio jars it compiles against (see apicurio-converter/pom.xml)."""
    javac, jar = shutil.which("javac"), shutil.which("jar")
    if javac is None or jar is None:
        raise StackError("the JDK's javac and jar are not installed; `make deps` installs them (openjdk-17-jdk-headless)")
    files = sorted(str(f) for f in sources.rglob("*.java"))
    classes = sources.parent / "classes"
    classes.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([javac, "--release", "17", "-nowarn", "-d", str(classes),
                           "-cp", f"{plugin_dir}/*{os.pathsep}{lib}/*", *files], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"javac could not build the converter in {sources}:\n{proc.stderr[-2000:]}")
    services = classes / "META-INF" / "services" / "org.apache.kafka.connect.storage.Converter"
    services.parent.mkdir(parents=True, exist_ok=True)
    services.write_text("dev.reshard.connect.ReusingAvroConverter\n")
    subprocess.run([jar, "cf", str(plugin_dir / REUSE_JAR), "-C", str(classes), "."], check=True,
                   capture_output=True)


def ensure_jvm_artifacts(log: Path | None = None) -> JvmArtifacts:
    """Return the artifact set, running Maven only when it is not complete yet. Maven runs
    on a copy of the POMs in the cache directory, so nothing is written beside the package
    (an installed reshard's site-packages stays untouched)."""
    sources = build_sources()
    if "pom.xml" not in sources:
        raise StackError(f"the package data {CONNECTORS} has no pom.xml: a broken installation")
    target = artifacts_dir(sources)
    if (target / COMPLETE_MARKER).is_file():
        return JvmArtifacts(target)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is not installed; `make deps` installs it (apt-get install maven)")
    if target.exists():
        shutil.rmtree(target)
    src = target / "src"
    for rel, data in sources.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    pom = src / "pom.xml"
    log = log or (target.parent / f"{target.name}.maven.log")
    with open(log, "w") as out:
        proc = subprocess.run(
            [mvn, "-B", "-q", "-f", str(pom), "package", f"-Dstack.dir={target}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=src,
        )
    if proc.returncode != 0:
        raise StackError(f"Maven could not fetch the JVM artifacts (exit {proc.returncode}); see {log}")
    fetch_registry(pom, target / "registry")
    fetch_converter(pom, target / "plugins" / "apicurio-converter")
    build_converter(src / "apicurio-converter" / "src", target / "plugins" / "apicurio-converter", target / "lib")
    if not any((target / "lib").glob("kafka_2.13-*.jar")) or not any(
        (target / "plugins").glob("debezium-connector-postgres/debezium-connector-postgres-*.jar")
    ) or not any((target / "plugins").glob("reshard-echo-filter/reshard-echo-filter-*.jar")
    ) or not (target / "registry" / "quarkus-run.jar").is_file() or not any(
        (target / "plugins").glob("apicurio-converter/apicurio-registry-java-sdk-*.jar")
    ):
        raise StackError(f"Maven finished but the expected jars are missing under {target}; see {log}")
    (target / COMPLETE_MARKER).write_text("ok\n")
    return JvmArtifacts(target)


if __name__ == "__main__":  # `python -m reshard.stack.artifacts` (used by make)
    print(ensure_jvm_artifacts().root)
