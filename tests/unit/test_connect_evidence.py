"""The failure evidence taken from a Connect worker's log (tests/connect_evidence.py)."""

from __future__ import annotations

from datetime import datetime

from tests.connect_evidence import log_window

LOG = """\
[2026-12-07 08:02:10,000] WARN before the test reshard-t1x1m-fwd-source1 (x)
[2026-12-07 08:02:14,803] WARN WorkerSourceTask{id=reshard-t5x3m-fwd-source1-0} failed to poll records (x)
org.apache.kafka.connect.errors.RetriableException: An exception occurred
\tat io.debezium.Foo.bar(Foo.java:1)
Caused by: java.net.SocketException: Broken pipe
[2026-12-07 08:02:15,326] INFO Stopping task reshard-t5x3m-fwd-source1-0 (org.apache.kafka.connect.runtime.Worker)
[2026-12-07 08:02:15,400] INFO Received offset commit request on 'LSN{0/1}', but ignoring it (y)
[2026-12-07 08:02:20,326] ERROR Graceful stop of task reshard-t5x3m-fwd-source1-0 failed. (z)
[2026-12-07 08:02:21,000] INFO Starting task reshard-t5x4m-rev1-target2-0 (z)
"""


def test_the_window_keeps_warnings_causes_and_task_lifecycle_after_its_start(tmp_path):
    log = tmp_path / "connect.log"
    log.write_text(LOG)
    since = datetime(2026, 12, 7, 8, 2, 12).timestamp()
    lines, migrations = log_window(log, since)
    assert [line[:26] for line in lines if line.startswith("[")] == [
        "[2026-12-07 08:02:14,803] ", "[2026-12-07 08:02:15,326] ", "[2026-12-07 08:02:20,326] ",
        "[2026-12-07 08:02:21,000] "]
    assert "    Caused by: java.net.SocketException: Broken pipe" in lines
    assert not any("at io.debezium" in line or "before the test" in line for line in lines)
    assert migrations == {"t5x3m", "t5x4m"}


def test_a_missing_log_is_said_not_raised(tmp_path):
    lines, migrations = log_window(tmp_path / "none.log", 0.0)
    assert lines[0].startswith("(no Connect log") and migrations == set()
