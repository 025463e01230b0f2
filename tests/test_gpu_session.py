"""scripts/gpu_session.sh runs what only a GPU can check first: the GPU-marked tests, then the
benchmarks, then the rest of the suite (a call cut short by the device tool's limit has already
reached the GPU tests). Run here with a stand-in python that only logs its arguments."""
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GPU_MARKS = "cuda or triton or extension"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_tests_run_first_then_benchmarks_then_the_rest(tmp_path):
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PY": str(fake), "OUT": str(out), "STAGES": "gputests bench tests"}
    subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True,
                   text=True, timeout=120)
    calls = [line for line in log.read_text().splitlines() if "-m|pytest|" in line]
    assert len(calls) == 3, calls
    gpu, bench, rest = calls
    assert "|tests|" in gpu and f"|-m|{GPU_MARKS}|" in gpu
    assert "|benchmarks/|" in bench and "--benchmark-only" in bench
    assert "|tests|" in rest and f"|-m|not ({GPU_MARKS})|" in rest
    assert (out / "session.log").exists()


def test_the_gpu_marks_are_registered():
    ini = (ROOT / "pytest.ini").read_text()
    for mark in ("cuda", "triton", "extension"):
        assert f"\n    {mark}:" in ini
