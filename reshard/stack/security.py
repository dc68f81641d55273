"""The embedded stack's secured mode (``reshard stack up --secure``): TLS everywhere reshard
and Debezium connect, SASL/SCRAM on Kafka, basic auth on Connect's REST API, passwords
on the PostgreSQL shard clusters. It is how reshard is tested against clusters set up
the way a production fleet is, on one machine.

Generated once per state directory, with the openssl and keytool command-line tools: a
CA, one server certificate for 127.0.0.1 / localhost signed by it (PEM for PostgreSQL,
PKCS12 for the JVMs), and random passwords. Secrets live in ``secrets/`` (mode 600) as
Java properties files, which reshard.yaml and the Connect worker both read by reference
(``${file:...}``); nothing secret is written into reshard.yaml or a connector config.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reshard.errors import StackError
from reshard.secrets import read_properties

KAFKA_USER = "reshard"
CONNECT_USER = "reshard"
SCRAM = "SCRAM-SHA-256"


def _run(*argv: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"{argv[0]} {argv[1]} failed while generating the secured stack's certificates:\n"
                         f"{proc.stderr[-2000:]}")


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass(frozen=True)
class Security:
    """Paths and secrets of the secured mode; ``ensure`` creates what is missing."""
    home: Path  # the stack's state directory

    @property
    def tls(self) -> Path:
        return self.home / "tls"

    @property
    def secrets(self) -> Path:
        return self.home / "secrets"

    @property
    def ca(self) -> Path:
        return self.tls / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.tls / "server.pem"

    @property
    def key(self) -> Path:
        return self.tls / "server.key"

    @property
    def keystore(self) -> Path:
        return self.tls / "server.p12"

    @property
    def truststore(self) -> Path:
        return self.tls / "truststore.p12"

    @property
    def passwords_file(self) -> Path:
        """kafka, connect, postgres and the keystores' password (read by reference)."""
        return self.secrets / "stack.properties"

    @property
    def pgpass(self) -> Path:
        return self.secrets / "pgpass"

    def password(self, of: str) -> str:
        return read_properties(self.passwords_file)[of]

    def reference(self, of: str) -> str:
        return f"${{file:{self.passwords_file}:{of}}}"

    def ensure(self) -> None:
        if self.truststore.is_file() and self.passwords_file.is_file():
            return
        for tool in ("openssl", "keytool"):
            if not shutil.which(tool):
                raise StackError(f"`stack up --secure` needs {tool} on PATH to generate its certificates")
        self.tls.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets, 0o700)
        words = {name: secrets.token_urlsafe(18) for name in ("kafka", "connect", "postgres", "store")}
        _write_secret(self.passwords_file, "".join(f"{k}={v}\n" for k, v in words.items()))
        t = self.tls
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj",
             "/CN=reshard embedded stack CA", "-keyout", str(t / "ca.key"), "-out", str(self.ca))
        _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", str(self.key), "-out", str(t / "server.csr"))
        (t / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _run("openssl", "x509", "-req", "-in", str(t / "server.csr"), "-CA", str(self.ca), "-CAkey", str(t / "ca.key"),
             "-CAcreateserial", "-days", "3650", "-extfile", str(t / "san.ext"), "-out", str(self.cert))
        _run("openssl", "pkcs12", "-export", "-in", str(self.cert), "-inkey", str(self.key), "-name", "server",
             "-out", str(self.keystore), "-passout", f"pass:{words['store']}")
        _run("keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", str(self.ca), "-storetype", "PKCS12",
             "-keystore", str(self.truststore), "-storepass", words["store"])
        os.chmod(self.key, 0o600)
        os.chmod(t / "ca.key", 0o600)
        # libpq's password file (host:port:db:user:password; any port: the clusters' ports move)
        _write_secret(self.pgpass, f"127.0.0.1:*:*:postgres:{words['postgres']}\n")

    # ---- per part -------------------------------------------------------------
    def kafka_client(self) -> dict[str, str]:
        """reshard.yaml's kafka.client: librdkafka over SASL_SSL, the secret by reference."""
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": SCRAM, "sasl.username": KAFKA_USER,
                "sasl.password": self.reference("kafka"), "ssl.ca.location": str(self.ca)}

    def java_client(self, prefix: str = "") -> list[str]:
        """A Java Kafka client's settings (the broker's own, the Connect worker's)."""
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{KAFKA_USER}" '
                f'password="{self.password("kafka")}";')
        return [f"{prefix}security.protocol=SASL_SSL", f"{prefix}sasl.mechanism={SCRAM}",
                f"{prefix}sasl.jaas.config={jaas}", f"{prefix}ssl.truststore.type=PKCS12",
                f"{prefix}ssl.truststore.location={self.truststore}",
                f"{prefix}ssl.truststore.password={self.password('store')}"]

    def keystore_settings(self, prefix: str = "") -> list[str]:
        return [f"{prefix}ssl.keystore.type=PKCS12", f"{prefix}ssl.keystore.location={self.keystore}",
                f"{prefix}ssl.keystore.password={self.password('store')}",
                f"{prefix}ssl.key.password={self.password('store')}"]

    def broker_listener(self) -> list[str]:
        """The broker: one SASL_SSL listener for clients and itself; the controller stays on
        a loopback PLAINTEXT listener no client is told about."""
        name = "listener.name.sasl_ssl"
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{KAFKA_USER}" '
                f'password="{self.password("kafka")}";')
        return [f"sasl.enabled.mechanisms={SCRAM}", f"sasl.mechanism.inter.broker.protocol={SCRAM}",
                f"{name}.{SCRAM.lower()}.sasl.jaas.config={jaas}",
                *self.keystore_settings(f"{name}."), *self.java_client(f"{name}.")[3:]]

    def scram_format_args(self) -> list[str]:
        """StorageTool format's arguments that create the SCRAM user with the metadata (KIP-900)."""
        return ["--add-scram", f"{SCRAM}=[name={KAFKA_USER},password={self.password('kafka')}]"]

    def connect_rest(self, home: Path) -> list[str]:
        """The Connect worker's REST API: https with the server certificate, basic auth from
        a users file read by the login module (``-Djava.security.auth.login.config``)."""
        users = home / "rest-users.properties"
        _write_secret(users, f"{CONNECT_USER}: {self.password('connect')}\n")
        (home / "rest-jaas.conf").write_text(
            "KafkaConnect {\n  org.apache.kafka.connect.rest.basic.auth.extension.PropertyFileLoginModule required\n"
            f'  file="{users}";\n}};\n')
        return ["rest.extension.classes=org.apache.kafka.connect.rest.basic.auth.extension."
                "BasicAuthSecurityRestExtension", *self.keystore_settings("listeners.https.")]

    def postgres_files(self, datadir: Path, user: str | None) -> None:
        """The server certificate and key inside the data directory, owned by the server's user."""
        for src, name in ((self.cert, "server.crt"), (self.key, "server.key")):
            dst = datadir / name
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o600)
            if user:
                shutil.chown(dst, user, user)

    def libpq(self) -> str:
        """What every DSN to a secured cluster carries: verified TLS, the password from a file."""
        return f"sslmode=verify-full sslrootcert={self.ca} passfile={self.pgpass}"
