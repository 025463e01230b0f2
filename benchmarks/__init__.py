"""Benchmarks (pytest-benchmark): ``pytest benchmarks/ --benchmark-only``; ratio table and chart
of the sampler suite: ``python -m benchmarks.report <json>``."""
