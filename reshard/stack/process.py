"""Start a server detached, remember exactly which process it is, stop exactly that one.

A pid alone is not an identity: after a reboot or a long time it may belong to an
unrelated process. We record the pid together with the kernel's start time of that
process (field 22 of /proc/<pid>/stat) and only signal a pid whose start time still
matches. Nothing here ever looks processes up by name.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from reshard.errors import StackError, WaitTimeout
from reshard.retry import poll


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_ticks: int
    argv: list[str]
    log: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ProcessRecord:
        return cls(int(d["pid"]), int(d["start_ticks"]), list(d["argv"]), str(d["log"]))


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a live pid, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def is_running(rec: ProcessRecord) -> bool:
    st = _stat(rec.pid)
    if st is None:
        return False
    state, ticks = st
    return ticks == rec.start_ticks and state not in ("Z", "X")


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawn(
    argv: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> ProcessRecord:
    """Start argv in its own session with stdout/stderr appended to ``log``.

    The process outlives the caller (``reshard stack up`` returns while the servers
    keep running). ``user`` drops privileges, for servers that refuse to run as root.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        kwargs: dict = {}
        if user is not None and os.geteuid() == 0:
            pw = pwd.getpwnam(user)
            kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
            env = {**(env or os.environ), "HOME": pw.pw_dir, "USER": user, "LOGNAME": user}
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            **kwargs,
        )
    try:
        st = poll(lambda: _stat(proc.pid), timeout=1.0, interval=0.01, what=f"{argv[0]} started")
    except WaitTimeout:
        raise RuntimeError(f"{argv[0]} exited immediately; see {log}") from None
    return ProcessRecord(proc.pid, st[1], list(argv), str(log))


def stop(rec: ProcessRecord, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Signal the recorded process, wait for it to exit, SIGKILL it past ``timeout``.

    Returns True when it was running and is now gone, False when it was already gone.
    """
    if not is_running(rec):
        _reap(rec.pid)
        return False
    try:
        os.kill(rec.pid, sig)
    except ProcessLookupError:
        return False
    def gone() -> bool:
        _reap(rec.pid)
        return not is_running(rec)
    try:
        poll(gone, timeout=timeout, interval=0.1, what=f"pid {rec.pid} exiting")
    except WaitTimeout:
        os.kill(rec.pid, signal.SIGKILL)
        with contextlib.suppress(WaitTimeout):
            poll(gone, timeout=5.0, interval=0.05, what=f"pid {rec.pid} exiting after SIGKILL")
    return True


def wait_healthy(rec: ProcessRecord, healthy: Callable[[], bool], log: Path, what: str, not_ready: str,
                 timeout: float, interval: float = 0.5) -> None:
    """Poll ``healthy`` until it holds; fail with the log's tail if the process exits first
    ("<what> exited while starting") or ``timeout`` passes ("<not_ready> within N s")."""

    def tails() -> str:  # a JVM's own output (a crash before its logging starts) is beside its log
        out = Path(log).with_suffix(".out")
        extra = tail(out) if out != Path(log) and out.exists() and out.stat().st_size else ""
        return tail(log) + (f"\n{out.name}:\n{extra}" if extra else "")

    def ready() -> bool:
        if not is_running(rec):
            raise StackError(f"{what} exited while starting:\n{tails()}")
        return healthy()
    try:
        poll(ready, timeout=timeout, interval=interval, what=not_ready)
    except WaitTimeout as exc:
        raise StackError(f"{exc}:\n{tails()}") from None


def tail(path: str | Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"
