"""Shared benchmark fixtures: ``speedup_report(line)`` collects one line per measured case, printed
in a section at the end of the run (pytest captures prints inside tests)."""
import pytest

_LINES: list[str] = []


@pytest.fixture
def speedup_report():
    return _LINES.append


def pytest_terminal_summary(terminalreporter):
    if _LINES:
        terminalreporter.section("speedups vs the reference backend")
        for line in _LINES:
            terminalreporter.write_line(line)
