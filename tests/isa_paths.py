"""The CPU kernels' instruction-set paths (ATEN_CPU_CAPABILITY selects one per process): which ones
this machine can run, and a module's check run on one of them in a fresh process. Shared by
tests/test_cpu_noise.py and tests/test_cpu_groupnorm_simd.py."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def isa_paths() -> list[str]:
    """ATEN_CPU_CAPABILITY values this CPU can run: the scalar path always, then the SIMD ones."""
    best = torch.backends.cpu.get_cpu_capability()
    return ["default"] + [p for p in ("avx2", "avx512") if best in ("AVX2", "AVX512")
                          and (p == "avx2" or best == "AVX512")]


def check_on_isa_path(module: str, path: str) -> None:
    """Runs ``module._check_this_process()`` (module: "tests.test_x"; it returns the capability it
    ran) in a fresh process with ATEN_CPU_CAPABILITY=path, the extension loaded first; fails with
    the child's stderr unless it passed on that path."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=path)
    code = f"import {module} as m, ddpm_fast.ops.extension as e; e.available(); print(m._check_this_process())"
    # the repository (module) and tests/ (the modules' own imports, as pytest's rootdir insertion)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == path.upper()
