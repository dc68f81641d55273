"""Prints the table of faults the chaos suite survived (each row only after its audit passed)."""

from tests.chaos.harness import report_lines


def pytest_terminal_summary(terminalreporter):
    lines = report_lines()
    if lines:
        terminalreporter.section("faults survived under load")
        for line in lines:
            terminalreporter.write_line(line)
