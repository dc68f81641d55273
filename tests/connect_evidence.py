"""What Kafka Connect was doing while an end-to-end test failed, attached to its report.

A stream that stops confirming (``wait`` times out) is decided inside the Connect worker,
whose log and threads the test cannot see: a rare CI failure left nothing to read. On a
failed test (tests/conftest.py) this adds the worker's warnings and errors from the test's
own window, and a thread dump of the tasks of the connectors that window names.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime
from pathlib import Path

LINE_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\] (\w+) ")
CONNECTOR = re.compile(r"reshard-(t\d+x\d+\w*?)-(?:fwd|rev\d*)-")
NOTABLE = ("Graceful", "not allowed yet", "resume position", "Retrieved latest position", "active for PID",
           "Starting task", "Stopping task", "config updated")
MAX_LINES = 120
# a task's own thread (poll, convert, send) and Debezium's streaming thread; the first frames
TASK_THREADS = ("task-thread-", "change-event-source-coordinator", "lsn-flush")
STACK_DEPTH = 40


def _stamp(line: str) -> tuple[float, str] | None:
    """A log line's time (epoch seconds) and level; None for a line that continues another."""
    m = LINE_TIME.match(line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000, m.group(3)


def log_window(log: Path, since: float) -> tuple[list[str], set[str]]:
    """The worker's WARN/ERROR lines (and lines about task starts, stops and slot positions)
    written since ``since`` (epoch seconds), and the migrations whose connectors they name."""
    kept: list[str] = []
    names: set[str] = set()
    inside = False
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return [f"(no Connect log: {exc})"], names
    for line in lines:
        stamped = _stamp(line)
        if stamped is not None:
            at, level = stamped
            inside = at >= since
            if not inside:
                continue
            names.update(CONNECTOR.findall(line))
            if level in ("WARN", "ERROR") or any(n in line for n in NOTABLE):
                kept.append(line[:400])
        elif inside and kept and line.startswith("Caused by"):
            kept.append("    " + line[:300])
    return kept[-MAX_LINES:], names


def task_threads(pid: int, migrations: set[str]) -> str:
    """The Connect worker's threads that belong to these migrations' connectors (jstack)."""
    try:
        dump = subprocess.run(["jstack", str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no thread dump: {exc})"
    blocks = []
    for block in dump.split("\n\n"):
        name = block.split("\n", 1)[0]
        if name.startswith('"') and any(m in name for m in migrations) and any(k in name for k in TASK_THREADS):
            blocks.append("\n".join(block.splitlines()[:STACK_DEPTH]))
    return "\n\n".join(blocks) or f"(no task thread named after {sorted(migrations)})"


def report(stack_home: Path, since: float) -> str:
    """The evidence as one text block for the test's report."""
    lines, migrations = log_window(stack_home / "connect" / "connect.log", since)
    out = ["Kafka Connect, warnings and task lifecycle during the test:", *lines]
    try:
        pid = json.loads((stack_home / "stack.json").read_text())["connect"]["process"]["pid"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return "\n".join([*out, f"(no Connect pid: {exc})"])
    if migrations:
        out += ["", f"threads of the connectors of {', '.join(sorted(migrations))}:", task_threads(pid, migrations)]
    return "\n".join(out)
