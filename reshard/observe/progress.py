"""Progress for long operations, on stderr only (stdout is reserved for --json).

On a terminal: live bars with rate and ETA (rich). Elsewhere (CI logs, cron mail):
one plain line per task every few seconds and at the end, with the same figures.
``log`` sends the same lines through the ``logging`` module instead (with
``--log-format json``: one JSON object each, figures as fields). ``off`` prints
nothing. Tasks may be advanced from several threads.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)

PLAIN_INTERVAL = 3.0
log = logging.getLogger("reshard.observe.progress")


def human_rate(n: float, unit: str) -> str:
    return f"{n:,.0f} {unit}/s"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m{s % 60:02.0f}s"
    return f"{s // 3600:.0f}h{(s % 3600) // 60:02.0f}m"


class Task:
    def __init__(self, owner: Progress, label: str, total: float | None, unit: str):
        self.owner = owner
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.started = time.monotonic()
        self.extra = ""
        self._last_print = 0.0
        self._rich_id: TaskID | None = None
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if not self.total or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)

    def line(self) -> str:
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total) if self.total else 0
            body = f"{self.done:,.0f}/{self.total:,.0f} {self.unit} ({pct:.0f}%)"
        else:
            body = f"{self.done:,.0f} {self.unit}"
        tail = f", {human_rate(self.rate, self.unit)}, ETA {human_seconds(self.eta)}" if self.total else (
            f", {human_rate(self.rate, self.unit)}"
        )
        extra = f" {self.extra}" if self.extra else ""
        return f"{self.label}: {body}{tail}{extra}"

    def advance(self, n: float = 1) -> None:
        with self._lock:
            self.done += n
        self.owner._refresh(self)

    def update(self, done: float | None = None, total: float | None = None, extra: str | None = None) -> None:
        with self._lock:
            if done is not None:
                self.done = done
            if total is not None:
                self.total = total
            if extra is not None:
                self.extra = extra
        self.owner._refresh(self)

    def close(self) -> None:
        self.owner._close(self)


class Progress:
    def __init__(self, mode: str = "auto", stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode = mode
        self._rich: RichProgress | None = None
        self._lock = threading.Lock()
        if mode == "rich":
            self._console = Console(file=self.stream)
            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=self._console,
                transient=False,
            )
            self._rich.start()

    def step(self, message: str) -> None:
        """A one-line note: a phase starting, a fact worth seeing."""
        if self.mode == "off":
            return
        if self.mode == "log":
            log.info(message)
        elif self._rich is not None:
            self._rich.console.print(f"[cyan]==>[/cyan] {message}")
        else:
            with self._lock:
                print(f"==> {message}", file=self.stream, flush=True)

    def task(self, label: str, total: float | None = None, unit: str = "rows") -> Task:
        t = Task(self, label, total, unit)
        if self._rich is not None:
            t._rich_id = self._rich.add_task(label, total=total, rate="", extra="")
        return t

    def _refresh(self, t: Task) -> None:
        if self.mode == "off":
            return
        if self._rich is not None and t._rich_id is not None:
            self._rich.update(t._rich_id, completed=t.done, total=t.total,
                              rate=human_rate(t.rate, t.unit), extra=t.extra)
            return
        now = time.monotonic()
        if now - t._last_print >= PLAIN_INTERVAL:
            t._last_print = now
            self._say(t, t.line())

    def _close(self, t: Task) -> None:
        if self.mode == "off":
            return
        if self._rich is not None and t._rich_id is not None:
            self._rich.update(t._rich_id, completed=t.done, total=t.total or t.done,
                              rate=human_rate(t.rate, t.unit), extra=t.extra)
            return
        self._say(t, t.line() + " - done", done=True)

    def _say(self, t: Task, line: str, done: bool = False) -> None:
        if self.mode == "log":
            log.info(line, extra={"task": t.label, "fields": {
                "done": t.done, "total": t.total, "unit": t.unit, "rate_per_s": round(t.rate, 1),
                "eta_s": None if t.eta is None else round(t.eta, 1), "finished": done}})
            return
        with self._lock:
            print(line, file=self.stream, flush=True)

    def stop(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
