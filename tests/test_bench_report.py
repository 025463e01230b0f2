"""benchmarks/report.py's verdicts on the CPU targets: the ratio of the interleaved rounds
(bench_cpu_targets.py ``_interleaved``) decides when a row has one, else the separate medians."""
from benchmarks import report


def _rows(d_s: float, ours_s: float, interleaved=None):
    base = {"model": "const3x32", "batch": 64, "steps": 200, "device": "cpu"}
    return [{**base, "impl": "diffusers", "s_per_step": d_s},
            {**base, "impl": "fused", "s_per_step": ours_s, "interleaved": interleaved}]


def test_interleaved_ratio_decides_the_verdict():
    # separate medians 1.98x (a miss), alternating rounds 2.10x (a pass)
    rows = _rows(1.98e-3, 1.0e-3, {"rounds": 7, "diffusers_median_s": 0.42, "ours_median_s": 0.2, "ratio": 2.10})
    (line,) = report.targets(rows)
    assert line.startswith("[PASS]") and "2.10x diffusers, interleaved" in line and "separate medians 1.98x" in line


def test_interleaved_miss_is_a_miss_even_when_the_medians_pass():
    rows = _rows(2.5e-3, 1.0e-3, {"rounds": 7, "diffusers_median_s": 0.38, "ours_median_s": 0.2, "ratio": 1.90})
    (line,) = report.targets(rows)
    assert line.startswith("[MISS]") and "1.90x" in line


def test_rows_without_interleaved_rounds_use_the_medians():
    (line,) = report.targets(_rows(3.0e-3, 1.0e-3))
    assert line == "[PASS] CPU const3x32 b64: fused 3.00x diffusers (target >= 2x)"
