"""Shared benchmark fixtures: ``speedup_report(line)`` collects one line per measured case, printed
in a section at the end of the run (pytest captures prints inside tests); ``sampler_rows`` collects
the sampler suite's timings (bench_sampler.py), printed as a ratio table (benchmarks/report.py).
DDPM_FAST_BENCH_THREADS=n sets torch's intra-op threads for every benchmark file (both
contenders of a case run with the same count)."""
import os

import pytest
import torch

if os.environ.get("DDPM_FAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["DDPM_FAST_BENCH_THREADS"]))

_LINES: list[str] = []
_SAMPLER_ROWS: list[dict] = []


@pytest.fixture
def speedup_report():
    return _LINES.append


@pytest.fixture
def sampler_rows():
    return _SAMPLER_ROWS


def pytest_terminal_summary(terminalreporter):
    if _SAMPLER_ROWS:
        from benchmarks import report
        rows = report.rows_from_session(_SAMPLER_ROWS)
        terminalreporter.section("sampler: time per step and speedups (python -m benchmarks.report <json> for the chart)")
        for line in report.ratio_table(rows).splitlines() + [""] + report.targets(rows):
            terminalreporter.write_line(line)
    if _LINES:
        terminalreporter.section("speedups vs the reference backend")
        for line in _LINES:
            terminalreporter.write_line(line)
