"""The embedded stack: PostgreSQL clusters, a Kafka broker, a Connect worker and a schema
registry (Apicurio, stored in the control PostgreSQL) on loopback.

``up`` is idempotent: parts already running (same pid *and* start time as recorded)
are reported, not started twice; parts that are down are started again on their old
ports and data, so a migration in progress survives a ``down``/``up``. ``down`` stops
exactly the processes ``up`` recorded, Connect first so it flushes its offsets, then
the registry and Kafka, then the databases. Everything lives under the state directory (``.reshard/``
or ``$RESHARD_HOME``): data, logs, ``stack.json`` and the ``reshard.yaml`` it writes.
"""

from __future__ import annotations

import fcntl
import json
import random
import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from reshard.config import ClusterConfig, Config, write_config
from reshard.errors import ConfigError, StackError
from reshard.stack import pg_binaries, standby
from reshard.stack.artifacts import JvmArtifacts, ensure_jvm_artifacts
from reshard.stack.connect import ConnectWorker
from reshard.stack.kafka import KafkaBroker
from reshard.stack.postgres import PostgresCluster, data_root
from reshard.stack.process import ProcessRecord, is_running, stop
from reshard.stack.registry import REGISTRY_DB, SchemaRegistry
from reshard.stack.security import Security

CONTROL = "control"
APP_DB = "app"
CONTROL_DB = "reshard"
STATE_VERSION = 1


def _ephemeral_low(default: int = 32768) -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port(rng: random.Random = random.SystemRandom()) -> int:
    """A free port below the kernel's ephemeral range. A port the kernel hands out for
    bind(0) comes from that range, which outgoing connections also draw their source
    ports from: in the seconds a JVM takes to listen on it, a client connection took it
    once ("Address already in use" in Connect's REST server). Below the range only a
    listener can hold a port, and ``port_free`` sees listeners."""
    low = max(1025, _ephemeral_low())
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        if port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded machine: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now. SO_REUSEADDR as the servers set it:
    connections lingering in TIME_WAIT after a crash must not make a part's recorded port
    look taken (it would come back elsewhere, and its dependants would not know)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@dataclass
class PartStatus:
    name: str
    kind: str  # postgres | kafka | connect | registry
    port: int | None
    pid: int | None
    running: bool
    healthy: bool
    log: str | None
    problem: str | None = None  # why a running part is not healthy, when known
    tls: bool = False  # secured mode: reached over TLS
    version: str | None = None  # postgres: the PostgreSQL major it runs


    @property
    def endpoint(self) -> str:
        if self.port is None:
            return "-"
        return {
            "postgres": f"postgresql://postgres@127.0.0.1:{self.port}/{CONTROL_DB if self.name == CONTROL else APP_DB}"
                        + ("?sslmode=verify-full" if self.tls else ""),
            "kafka": f"{'SASL_SSL://' if self.tls else ''}127.0.0.1:{self.port}",
            "connect": f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}",
            "registry": f"http://127.0.0.1:{self.port}/apis/ccompat/v7",
        }[self.kind]

    def to_dict(self) -> dict:
        return {**self.__dict__, "endpoint": self.endpoint}


@dataclass(frozen=True)
class PgVersions:
    """The PostgreSQL major of each role of a new stack (None: pg_binaries.DEFAULT). A
    target older than its source is refused: a migration moves rows to a major at least
    as new, which is how teams upgrade while they reshard."""

    default: int | None = None  # control, and any role not given
    sources: int | None = None
    targets: int | None = None

    def __post_init__(self) -> None:
        for v in (self.default, self.sources, self.targets):
            if v is not None:
                pg_binaries.check_major(v)
        if self.source_major > self.target_major:
            raise StackError(f"targets on PostgreSQL {self.target_major} cannot take rows from sources on "
                             f"{self.source_major}: a target must run the same major or a newer one")

    @property
    def source_major(self) -> int:
        return self.sources or self.default or pg_binaries.DEFAULT

    @property
    def target_major(self) -> int:
        return self.targets or self.default or pg_binaries.DEFAULT

    def of(self, cluster: str) -> int | None:
        """The major asked for ``cluster`` (None when nothing was asked: an existing cluster keeps its own)."""
        if cluster.startswith("source"):
            return self.sources or self.default
        if cluster.startswith("target"):
            return self.targets or self.default
        return self.default


@dataclass
class UpResult:
    config_path: Path
    config: Config
    started: list[str]
    already_running: list[str]


class Stack:
    """Owns the state directory; every method takes the state lock first."""

    def __init__(self, home: Path, say: Callable[[str], None] | None = None):
        self.home = home
        self.say = say or (lambda _msg: None)
        self.state_path = home / "stack.json"

    # ---- state -------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "stack.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._load()
            try:
                yield state
            finally:
                # saved even when a start fails, so `down` can stop what did start
                self._save(state)

    def _load(self) -> dict:
        if self.state_path.is_file():
            state = json.loads(self.state_path.read_text())
            if state.get("version") != STATE_VERSION:
                raise StackError(f"{self.state_path} has an unknown format version {state.get('version')}")
            return state
        return {"version": STATE_VERSION, "clusters": {}, "kafka": None, "connect": None, "registry": None}

    def _save(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_path)

    @staticmethod
    def _rec(part: dict | None) -> ProcessRecord | None:
        if part and part.get("process"):
            return ProcessRecord.from_dict(part["process"])
        return None

    def _alive(self, part: dict | None) -> bool:
        rec = self._rec(part)
        return rec is not None and is_running(rec)

    def _port(self, current: int | None) -> int:
        return current if current and port_free(current) else free_port()

    # ---- up ------------------------------------------------------------------
    def _security(self, state: dict) -> Security | None:
        return Security(self.home) if state.get("secure") else None

    def up(self, sources: int = 1, targets: int = 2, secure: bool = False, pg: PgVersions | None = None,
           standby: bool = False) -> UpResult:
        """``secure``: TLS, SASL/SCRAM and passwords everywhere (see stack/security.py); chosen
        when the stack is first created, kept by every later ``up``. ``pg``: the PostgreSQL
        major of each role, for clusters created now (a cluster keeps the one it has).
        ``standby``: each source gets a streaming standby (stack/standby.py) and reshard.yaml
        lists both hosts, so a test or a user can fail a source over; kept by later ``up``s."""
        if sources < 1 or targets < 1:
            raise StackError("the embedded stack needs at least one source and one target cluster")
        pg = pg or PgVersions()
        with self._locked() as state:
            if secure and state["clusters"] and not state.get("secure"):
                raise StackError(f"the stack in {self.home} was created without --secure; "
                                 "`reshard stack down` and `reshard stack purge` first to create a secured one")
            if (standby or state.get("standby")) and (secure or state.get("secure")):
                raise ConfigError("--standby and --secure together are not supported yet: the standby streams from its "
                                  "primary without TLS or a password")
            state["secure"] = bool(secure or state.get("secure"))
            state["standby"] = bool(standby or state.get("standby"))
            security = self._security(state)
            if security:
                security.ensure()
            names = [CONTROL] + [f"source{i}" for i in range(1, sources + 1)] + [f"target{i}" for i in range(1, targets + 1)]
            # clusters from an earlier, larger `up` stay part of the stack
            names += [n for n in state["clusters"] if n not in names]
            bring = _BringUp(self, state, security, pg)
            bring.plan(names)
            bring.postgres_and_kafka()
            bring.connect()
            bring.registry()
            for name, c in bring.clusters.items():
                c.ensure_database(CONTROL_DB if name == CONTROL else APP_DB)
            if state["standby"]:
                bring.standbys([n for n in names if n.startswith("source")])
            config = self._config(state)
            path = self.home / "reshard.yaml"
            write_config(config, path)
            return UpResult(path, config, bring.started, bring.running)

    def _config(self, state: dict) -> Config:
        security = self._security(state)
        clusters = {}
        for name, part in state["clusters"].items():
            if name == CONTROL:
                continue
            dsn = PostgresCluster(name, Path(part["datadir"]), part["port"], Path(part["log"]), security).dsn(APP_DB)
            sb = (state.get("standbys") or {}).get(name)
            if sb:  # the primary and its standby: reshard finds whichever is the primary
                dsn = (f"host=127.0.0.1,127.0.0.1 port={part['port']},{sb['port']} user=postgres dbname={APP_DB} "
                       "target_session_attrs=read-write")
            clusters[name] = ClusterConfig(name, dsn, dsn)
        control = state["clusters"][CONTROL]
        kafka = KafkaBroker(self.home / "kafka", state["kafka"]["port"], state["kafka"]["controller_port"], security)
        # the worker's file config provider reads the passwords reshard writes to its secrets_dir
        worker = ConnectWorker(self.home / "connect", state["connect"]["port"], kafka.bootstrap, security)
        return Config(
            path=self.home / "reshard.yaml",
            control_dsn=f"host=127.0.0.1 port={control['port']} user=postgres dbname={CONTROL_DB}",
            clusters=clusters,
            kafka=replace(kafka.client, partitions=4, replication_factor=1,
                          schema_registry_url=(f"http://127.0.0.1:{state['registry']['port']}/apis/ccompat/v7"
                                               if state.get("registry") else None)),
            connect=worker.client_config(),
        )

    # ---- status --------------------------------------------------------------
    def status(self) -> list[PartStatus]:
        with self._locked() as state:
            out: list[PartStatus] = []
            security = self._security(state)
            for name, part in state["clusters"].items():
                rec = self._rec(part)
                alive = self._alive(part)
                c = PostgresCluster(name, Path(part["datadir"]), part["port"], Path(part["log"]),
                                    None if name == CONTROL else security)
                major = c.initialized_major()
                out.append(PartStatus(name, "postgres", part["port"], rec.pid if rec else None,
                                      alive, alive and c.healthy(), part.get("log"), tls=c.security is not None,
                                      version=str(major) if major else None))
            for source, part in (state.get("standbys") or {}).items():
                rec, alive = self._rec(part), self._alive(part)
                c = PostgresCluster(f"{source}-standby", Path(part["datadir"]), part["port"], Path(part["log"]))
                major = c.initialized_major()
                out.append(PartStatus(c.name, "postgres", part["port"], rec.pid if rec else None, alive,
                                      alive and c.healthy(), part.get("log"), version=str(major) if major else None))
            broker_ok, bootstrap = False, None
            if state.get("kafka"):
                part = state["kafka"]
                rec, alive = self._rec(part), self._alive(part)
                broker = KafkaBroker(self.home / "kafka", part["port"], part["controller_port"], security)
                broker_ok, bootstrap = alive and broker.healthy(), broker.bootstrap
                out.append(PartStatus("kafka", "kafka", part["port"], rec.pid if rec else None,
                                      alive, broker_ok, part.get("log"), tls=security is not None))
            if state.get("connect"):
                part = state["connect"]
                rec, alive = self._rec(part), self._alive(part)
                worker = ConnectWorker(self.home / "connect", part["port"], "", security)
                healthy = alive and worker.healthy()
                problem = None
                if alive:
                    # a worker answers its REST API while retrying a broker it cannot reach,
                    # so it is healthy only if the broker it was started with is this one and up
                    points_at = worker.configured_bootstrap()
                    if points_at != bootstrap:
                        problem = f"points at Kafka {points_at}, but the broker is at {bootstrap}; run `stack up`"
                    elif not broker_ok:
                        problem = f"cannot reach Kafka at {bootstrap}"
                    elif not healthy:
                        problem = "REST API not answering or the Debezium plugin not loaded"
                out.append(PartStatus("connect", "connect", part["port"], rec.pid if rec else None,
                                      alive, healthy and problem is None, part.get("log"), problem,
                                      tls=security is not None))
            if state.get("registry"):
                part = state["registry"]
                rec, alive = self._rec(part), self._alive(part)
                registry = SchemaRegistry(self.home / "registry", part["port"], 0)
                out.append(PartStatus("registry", "registry", part["port"], rec.pid if rec else None,
                                      alive, alive and registry.healthy(), part.get("log")))
            return out

    def config(self) -> Config:
        with self._locked() as state:
            if not state["clusters"] or not state.get("kafka") or not state.get("connect"):
                raise StackError(f"no embedded stack in {self.home}; run `reshard stack up`")
            return self._config(state)

    def is_up(self) -> bool:
        parts = self.status()
        return bool(parts) and all(p.running and p.healthy for p in parts)

    # ---- purge ---------------------------------------------------------------
    def purge(self) -> list[str]:
        """After ``down``: delete the stack's data, logs and config (and the data directory
        outside the state directory, when PostgreSQL needed one). Refuses while running."""
        if any(p.running for p in self.status()):
            raise StackError("the stack is running; `reshard stack down` first")
        removed = []
        pg = self.home / "pg"
        if pg.is_symlink():
            target = pg.resolve()
            shutil.rmtree(target, ignore_errors=True)
            removed.append(str(target))
        shutil.rmtree(self.home, ignore_errors=True)
        removed.append(str(self.home))
        return removed

    # ---- down ----------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop what `up` recorded; return the names of the processes that were stopped."""
        stopped: list[str] = []
        with self._locked() as state:
            order: list[tuple[str, dict, int]] = []
            if state.get("connect"):
                order.append(("connect", state["connect"], signal.SIGTERM))
            if state.get("registry"):
                order.append(("registry", state["registry"], signal.SIGTERM))
            if state.get("kafka"):
                order.append(("kafka", state["kafka"], signal.SIGTERM))
            # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit
            order += [(f"{n}-standby", p, signal.SIGINT) for n, p in (state.get("standbys") or {}).items()]
            order += [(n, p, signal.SIGINT) for n, p in state["clusters"].items()]
            for name, part, sig in order:
                rec = self._rec(part)
                if rec is None:
                    continue
                if stop(rec, sig=sig, timeout=60.0):
                    stopped.append(name)
                    self.say(f"{name}: stopped (pid {rec.pid})")
                part["process"] = None
                self._save(state)
        return stopped


class _BringUp:
    """One ``Stack.up``: which parts are already running (kept, on their ports) and which
    start (on their old ports when free), each recorded in the state as soon as it has a
    process, so that ``stack down`` can stop whatever did start."""

    def __init__(self, stack: Stack, state: dict, security: Security | None, pg: PgVersions):
        self.stack, self.state, self.security, self.pg = stack, state, security, pg
        self.say = stack.say
        self.started: list[str] = []
        self.running: list[str] = []
        self.clusters: dict[str, PostgresCluster] = {}
        self.to_start: list[str] = []
        self.art: JvmArtifacts | None = None

    def _record(self, key: str, part: dict) -> None:
        self.state[key] = part
        self.stack._save(self.state)

    def plan(self, names: list[str]) -> None:
        """Ports and liveness of every part; the JVM artifacts when a JVM part must start."""
        st, root = self.stack, data_root(self.stack.home)
        for name in names:
            part = self.state["clusters"].get(name, {})
            alive = st._alive(part)
            port = part["port"] if alive else st._port(part.get("port"))
            c = PostgresCluster(name, root / name, port, st.home / "logs" / f"postgres-{name}.log",
                                None if name == CONTROL else self.security, self.pg.of(name))
            c.bindir()  # a cluster asked for another major than it has is refused before anything starts
            self.clusters[name] = c
            self.state["clusters"][name] = {**part, "port": port, "datadir": str(root / name), "log": str(c.log)}
            (self.running if alive else self.to_start).append(name)
        self.kafka_part = self.state.get("kafka") or {}
        self.kafka_alive = st._alive(self.kafka_part)
        kafka_port = self.kafka_part["port"] if self.kafka_alive else st._port(self.kafka_part.get("port"))
        ctl_port = self.kafka_part["controller_port"] if self.kafka_alive else st._port(self.kafka_part.get("controller_port"))
        self.broker = KafkaBroker(st.home / "kafka", kafka_port, ctl_port, self.security)
        self.connect_part = self.state.get("connect") or {}
        self.connect_alive = st._alive(self.connect_part)
        if self.connect_alive and not self.kafka_alive and self.kafka_part.get("port") not in (None, kafka_port):
            # the broker comes back on another address: a worker pointing at the old one
            # would retry forever while looking healthy, so it restarts with the new one
            self.say(f"connect: restarting, Kafka moved from port {self.kafka_part['port']} to {kafka_port}")
            stop(st._rec(self.connect_part))  # type: ignore[arg-type]
            self.connect_alive = False
        self.registry_part = self.state.get("registry") or {}
        self.registry_alive = st._alive(self.registry_part)
        if self.registry_alive and self.registry_part.get("pg_port") != self.clusters[CONTROL].port:
            # its storage came back on another port: restart it pointing there
            self.say(f"registry: restarting, the control PostgreSQL moved to port {self.clusters[CONTROL].port}")
            stop(st._rec(self.registry_part))  # type: ignore[arg-type]
            self.registry_alive = False
        if not (self.kafka_alive and self.connect_alive and self.registry_alive):
            self.say("JVM artifacts: resolving the pinned Kafka, Connect and Debezium jars (cached after the first time)")
            self.art = ensure_jvm_artifacts()

    def _start_pg(self, name: str) -> tuple[str, ProcessRecord]:
        c = self.clusters[name]
        c.init()
        rec = c.start()
        c.wait_ready(rec)
        return name, rec

    def postgres_and_kafka(self) -> None:
        """The clusters start in parallel beside the broker; every one that started is
        recorded, whatever happened to the others."""
        errors: list[str] = []
        kafka_rec = None
        with ThreadPoolExecutor(max_workers=4) as pool:
            pg_futures = [pool.submit(self._start_pg, n) for n in self.to_start]
            try:
                if not self.kafka_alive:
                    assert self.art is not None
                    b = self.broker
                    self.say(f"kafka: starting broker on 127.0.0.1:{b.port}")
                    b.init(self.art)
                    kafka_rec = b.start(self.art)
                    self._record("kafka", {"port": b.port, "controller_port": b.controller_port, "log": str(b.log),
                                           "process": kafka_rec.to_dict()})
                else:
                    self.state["kafka"] = self.kafka_part
                    self.running.append("kafka")
            except StackError as exc:
                errors.append(f"kafka: {exc}")
            finally:
                for fut in pg_futures:
                    try:
                        name, rec = fut.result()
                        c = self.clusters[name]
                        self.state["clusters"][name].update(process=rec.to_dict(), major=c.initialized_major())
                        self.started.append(name)
                        self.say(f"postgres {name}: PostgreSQL {c.initialized_major()} ready on 127.0.0.1:{c.port}")
                    except StackError as exc:
                        errors.append(str(exc))
                self.stack._save(self.state)
        if errors:
            raise StackError("\n".join(errors))
        if kafka_rec is not None:
            self.broker.wait_ready(kafka_rec)
            self.started.append("kafka")
            self.say(f"kafka: ready on {self.broker.bootstrap}")

    def standbys(self, sources: list[str]) -> None:
        """Each source's streaming standby: made from the running primary the first time,
        restarted afterwards (following the primary's port). A standby that was promoted
        is a primary now, and so is its old primary: refused rather than run as two."""
        st, root = self.stack, data_root(self.stack.home)
        recorded = self.state.setdefault("standbys", {})
        for source in sources:
            name, part = f"{source}-standby", recorded.get(source, {})
            if st._alive(part):
                self.running.append(name)
                continue
            primary = self.clusters[source]
            c = PostgresCluster(name, root / name, st._port(part.get("port")), st.home / "logs" / f"postgres-{name}.log")
            if c.initialized():
                if not (c.datadir / "standby.signal").exists():
                    raise StackError(f"{name} was promoted: it and {source} are both primaries now; "
                                     "`reshard stack down --purge` and `stack up --standby` to start afresh")
                standby.follow(c, primary)
                c.init()  # the port line
                rec = c.start()
                c.wait_ready(rec)
            else:
                self.say(f"postgres {name}: copying {source} into a streaming standby")
                rec = standby.create(primary, c)
            recorded[source] = {"port": c.port, "datadir": str(c.datadir), "log": str(c.log), "process": rec.to_dict()}
            self.stack._save(self.state)
            self.started.append(name)
            self.say(f"postgres {name}: standby of {source} ready on 127.0.0.1:{c.port}")

    def connect(self) -> None:
        if self.connect_alive:
            self.state["connect"] = self.connect_part
            self.running.append("connect")
            return
        assert self.art is not None
        port = self.stack._port(self.connect_part.get("port"))
        worker = ConnectWorker(self.stack.home / "connect", port, self.broker.bootstrap, self.security)
        self.say(f"connect: starting worker on {worker.url} (takes ~15 s)")
        worker.init(self.art)
        rec = worker.start(self.art)
        self._record("connect", {"port": port, "log": str(worker.log), "process": rec.to_dict()})
        worker.wait_ready(rec)
        self.started.append("connect")
        self.say(f"connect: ready on {worker.url}, Debezium PostgreSQL plugin loaded")

    def registry(self) -> None:
        if self.registry_alive:
            self.state["registry"] = self.registry_part
            self.running.append("registry")
            return
        assert self.art is not None
        control = self.clusters[CONTROL]
        control.ensure_database(REGISTRY_DB)
        registry = SchemaRegistry(self.stack.home / "registry", self.stack._port(self.registry_part.get("port")),
                                  control.port)
        self.say(f"registry: starting Apicurio on {registry.url}")
        rec = registry.start(self.art)
        self._record("registry", {"port": registry.port, "pg_port": registry.pg_port, "log": str(registry.log),
                                  "process": rec.to_dict()})
        registry.wait_ready(rec)
        self.started.append("registry")
        self.say(f"registry: ready on {registry.url}, schemas stored in the control PostgreSQL")
