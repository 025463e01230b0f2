"""The CUDA groupnorm_temb_silu work split (csrc/include/ddpm_fast/groupnorm_plan.h) checked on the
host: tests/cpp/groupnorm_plan_host.cpp walks every stats block and thread and the apply kernel's
grid-stride loop as csrc/cuda/groupnorm_temb_silu.cu does, asserting each element is visited
once, the division-free row walk agrees with element // HW, and the plan's bounds. (The kernels'
results are compared with the float64 closed form on a GPU: tests/test_extension_ops.py.)"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")

# (B, C, HW, G): one group per sample, many small groups (no split), large groups split across
# blocks, HW % 8 != 0 (scalar path only), rows shorter than a vector step, a single element
SHAPES = [(1, 4, 100 * 93, 2), (2, 64, 1024, 32), (1, 8, 128 * 96, 2), (3, 6, 16 * 8, 3), (1, 1, 1, 1),
          (5, 12, 35, 4), (1, 2, 512 * 512, 1), (64, 32, 64, 32), (1, 512, 8, 32), (2, 3, 7, 1)]


@pytest.fixture(scope="module")
def plan_host(tmp_path_factory):
    if CXX is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path_factory.mktemp("gn") / "groupnorm_plan_host"
    subprocess.run([CXX, "-std=c++20", "-O2", f"-I{ROOT / 'csrc' / 'include'}",
                    str(ROOT / "tests" / "cpp" / "groupnorm_plan_host.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, timeout=300)
    return exe


@pytest.mark.parametrize("shape", SHAPES)
def test_every_element_once_and_rows_without_division(plan_host, shape):
    res = subprocess.run([str(plan_host), *map(str, shape)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:]


def test_the_checker_fails_a_bad_split(plan_host, tmp_path):
    """The host checker itself: with a plan that drops the last block's elements it reports."""
    src = (ROOT / "tests" / "cpp" / "groupnorm_plan_host.cpp").read_text()
    header = (ROOT / "csrc" / "include" / "ddpm_fast" / "groupnorm_plan.h").read_text()
    bad = tmp_path / "include" / "ddpm_fast"
    bad.mkdir(parents=True)
    (bad / "groupnorm_plan.h").write_text(header.replace("p.splits = (p.count + p.chunk - 1) / p.chunk;",
                                                         "p.splits = p.count / p.chunk;"))
    (bad / "macros.h").write_text((ROOT / "csrc" / "include" / "ddpm_fast" / "macros.h").read_text())
    (tmp_path / "main.cpp").write_text(src)
    exe = tmp_path / "bad"
    subprocess.run([CXX, "-std=c++20", "-O2", f"-I{tmp_path / 'include'}", str(tmp_path / "main.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, timeout=300)
    res = subprocess.run([str(exe), "1", "4", str(100 * 93), "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "coverage" in res.stdout
