"""One embedded PostgreSQL cluster: initdb once, configure for logical decoding, run.

Any supported major (15-18, see pg_binaries.py); a cluster keeps the major it was
initialized with. PostgreSQL refuses to run as root, so when reshard runs as root the cluster runs as the ``postgres`` system user
(the package creates it); its data directory then has to live where that user can
reach it, which a checkout under /root is not, so we fall back to a directory of
its own under /var/tmp and link to it from the state directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from reshard.errors import StackError
from reshard.stack import pg_binaries
from reshard.stack.pg_binaries import server_user
from reshard.stack.process import ProcessRecord, spawn, wait_healthy
from reshard.stack.security import Security

# Settings every reshard cluster needs (logical decoding, enough slots and senders
# for a connector per migration plus the snapshotter's exporting connection), on
# loopback only, and no Unix socket so that paths never hit the 107-byte limit.
CONF = """
# --- reshard embedded stack ---
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
wal_level = logical
max_replication_slots = 64
max_wal_senders = 32
max_connections = 200
logging_collector = off
log_min_messages = warning
log_line_prefix = '%m [%p] {name} '
"""

# Secured mode (stack up --secure): TLS only, SCRAM passwords, no trust
SECURE_CONF = """
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
password_encryption = scram-sha-256
"""
SECURE_HBA = """# reshard embedded stack, secured: TLS and a SCRAM password for every connection
hostssl all all 127.0.0.1/32 scram-sha-256
hostssl replication all 127.0.0.1/32 scram-sha-256
"""


def _reachable_by(user: str, path: Path) -> bool:
    return subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(path)], capture_output=True).returncode == 0


def data_root(state_dir: Path) -> Path:
    """Where cluster data directories go: <state>/pg, or a fallback the server user can reach."""
    root = state_dir / "pg"
    user = server_user()
    if user is None:
        root.mkdir(parents=True, exist_ok=True)
        return root
    if root.is_symlink():
        return root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    shutil.chown(root, user)
    if _reachable_by(user, root):
        return root
    root.rmdir()
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:12]
    fallback = Path("/var/tmp/reshard-pg") / digest
    fallback.mkdir(parents=True, exist_ok=True)
    os.chmod(fallback.parent, 0o755)
    shutil.chown(fallback, user)
    root.symlink_to(fallback, target_is_directory=True)
    return fallback


@dataclass
class PostgresCluster:
    name: str
    datadir: Path
    port: int
    log: Path
    security: Security | None = None  # secured mode: TLS and passwords
    major: int | None = None  # the PostgreSQL major to initialize (None: the default); an existing cluster keeps its own

    def initialized_major(self) -> int | None:
        f = self.datadir / "PG_VERSION"
        return int(f.read_text().strip()) if f.is_file() else None

    def bindir(self) -> Path:
        """The binaries of this cluster's major: the one it was initialized with, else the one asked for."""
        existing = self.initialized_major()
        if existing is not None and self.major is not None and existing != self.major:
            raise StackError(f"postgres {self.name} was initialized with PostgreSQL {existing}, not {self.major}: "
                             "`reshard stack down --purge` first to change the version")
        return pg_binaries.bindir(existing or self.major)

    def dsn(self, dbname: str = "postgres") -> str:
        extra = f" {self.security.libpq()}" if self.security else ""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}{extra}"

    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").is_file()

    def init(self) -> None:
        """initdb once; afterwards only the port line is kept current."""
        bindir = self.bindir()
        user = server_user()
        if not self.initialized():
            self.datadir.mkdir(parents=True, exist_ok=True)
            if user:
                shutil.chown(self.datadir, user)
            os.chmod(self.datadir, 0o700)
            cmd = [str(bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                   "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
            pwfile = self.datadir.parent / f".{self.name}.pw"
            if self.security:  # the superuser's password, from a file only the server's user reads
                pwfile.write_text(self.security.password("postgres") + "\n")
                os.chmod(pwfile, 0o600)
                if user:
                    shutil.chown(pwfile, user)
                cmd[cmd.index("--auth=trust")] = "--auth=scram-sha-256"
                cmd.append(f"--pwfile={pwfile}")
            if user:
                cmd = ["runuser", "-u", user, "--"] + cmd
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True)
            finally:
                pwfile.unlink(missing_ok=True)
            if proc.returncode != 0:
                raise StackError(f"initdb for {self.name} failed: {proc.stderr.strip() or proc.stdout.strip()}")
            with open(self.datadir / "postgresql.conf", "a") as f:
                f.write(CONF.format(port=self.port, name=self.name))
                if self.security:
                    f.write(SECURE_CONF)
            if self.security:
                (self.datadir / "pg_hba.conf").write_text(SECURE_HBA)
                self.security.postgres_files(self.datadir, user)
        else:
            conf = self.datadir / "postgresql.conf"
            text = re.sub(r"(?m)^port = \d+$", f"port = {self.port}", conf.read_text())
            conf.write_text(text)

    def start(self) -> ProcessRecord:
        # A stale postmaster.pid after a crash is fine: postgres checks whether the pid
        # in it is alive and refuses to start only if it is.
        return spawn([str(self.bindir() / "postgres"), "-D", str(self.datadir)], self.log, user=server_user())

    def wait_ready(self, rec: ProcessRecord, timeout: float = 60.0) -> None:
        wait_healthy(rec, self.healthy, self.log, f"postgres {self.name}", f"postgres {self.name} not ready", timeout,
                     interval=0.2)

    def healthy(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def ensure_database(self, dbname: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
