"""The C++ headers mirror the Python enums; the loader refuses a library built for another torch;
the build files glob the sources. None of these needs the extension to be built except where marked."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_fast.ops import enums
from ddpm_fast.schedule import TABLE_WIDTH, Col

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = ROOT / "csrc" / "include" / "ddpm_fast"


def _enum_values(text: str, name: str) -> dict[str, int]:
    body = re.search(r"enum\s+" + name + r"\s*:\s*int\s*\{(.*?)\}", text, re.S).group(1)
    return {k: int(v) for k, v in re.findall(r"(\w+)\s*=\s*(-?\d+)", body)}


def test_schedule_columns_header_matches_col():
    text = (INCLUDE / "schedule_columns.h").read_text()
    assert _enum_values(text, "Col") == {c.name: int(c) for c in Col}
    assert int(re.search(r"kTableWidth\s*=\s*(\d+)", text).group(1)) == TABLE_WIDTH


def test_enums_header_matches_python():
    text = (INCLUDE / "enums.h").read_text()
    from ddpm_fast import noise
    want = {
        "Prediction": {"PRED_EPSILON": enums.PRED_EPSILON, "PRED_SAMPLE": enums.PRED_SAMPLE, "PRED_V": enums.PRED_V},
        "Variance": {"VAR_FIXED_SMALL": enums.VAR_FIXED_SMALL, "VAR_FIXED_LARGE": enums.VAR_FIXED_LARGE},
        "TembMode": {"TEMB_NONE": enums.TEMB_NONE, "TEMB_BEFORE_NORM": enums.TEMB_BEFORE_NORM,
                     "TEMB_AFTER_NORM": enums.TEMB_AFTER_NORM},
        "MultistepColumn": {"MS_X0_X": enums.MS_X0_X, "MS_X0_M": enums.MS_X0_M, "MS_X": enums.MS_X,
                            "MS_X0": enums.MS_X0, "MS_HISTORY": enums.MS_HISTORY,
                            "MS_MAX_HISTORY": enums.MS_MAX_HISTORY, "MS_WIDTH": enums.MS_WIDTH},
        "Stream": {"STREAM_INIT": noise.STREAM_INIT, "STREAM_STEP": noise.STREAM_STEP,
                   "STREAM_Q_SAMPLE": noise.STREAM_Q_SAMPLE},
    }
    for name, values in want.items():
        assert _enum_values(text, name) == values, name


def test_philox_constants_match_reference():
    from ddpm_fast import noise
    text = (INCLUDE / "philox.h").read_text()
    consts = {k: int(v, 16) for k, v in re.findall(r"(kPhilox\w+)\s*=\s*(0x[0-9A-Fa-f]+)u", text)}
    assert consts == {"kPhiloxM0": noise._M0, "kPhiloxM1": noise._M1, "kPhiloxW0": noise._W0, "kPhiloxW1": noise._W1}
    assert float(re.search(r"kTwoPiF32\s*=\s*([\d.]+)f", text).group(1)) == noise.TWO_PI_F32


def test_every_table_op_has_a_cpu_kernel_and_a_cuda_binding():
    """The op table (ddpm_fast/ops/table.py) is the one list of ops: csrc/ defines no schema of
    its own, and every op has one CPU kernel registration, and one CUDA kernel registration unless
    the table marks it CPU only (``OpSpec.cuda`` False)."""
    from ddpm_fast.ops.table import OPS
    schemas = [op.name for op in OPS]
    assert not re.search(r"TORCH_LIBRARY\(|m\.def\(", "".join(f.read_text() for f in (ROOT / "csrc").rglob("*.*pp")))
    bound = re.findall(r'm\.impl\("(\w+)"', (ROOT / "csrc" / "cuda" / "bindings.cpp").read_text())
    assert sorted(bound) == sorted(op.name for op in OPS if op.cuda)
    cpu = [op for f in (ROOT / "csrc" / "cpu").glob("*.cpp") for op in re.findall(r'm\.impl\("(\w+)"', f.read_text())]
    assert sorted(cpu) == sorted(schemas)


def test_cuda_sources_have_no_torch_headers():
    for f in (ROOT / "csrc" / "cuda").glob("*.cu*"):
        assert not re.search(r"#include\s*[<\"](torch|ATen|c10)/", f.read_text()), f


def test_cuda_binding_includes_no_cuda_context_header():
    """The binding needs only c10/cuda's stream and guard: ATen/cuda/CUDAContext.h pulls cuBLAS and
    cuSPARSE headers (and their include paths) into a file that calls neither."""
    text = (ROOT / "csrc" / "cuda" / "bindings.cpp").read_text()
    assert re.search(r"#include\s*[<\"]c10/cuda/CUDAGuard\.h", text)
    assert not re.search(r"#include\s*[<\"]ATen/cuda/", text)


@pytest.mark.extension
def test_loader_refuses_a_library_built_for_another_torch(tmp_path):
    from ddpm_fast.ops import extension
    if not extension.available():
        pytest.skip("C++ extension not built")
    import importlib.util
    so = importlib.util.find_spec("ddpm_fast._C").origin
    data = Path(so).read_bytes()
    old = b"ddpm_fast-build-info:torch=" + torch.__version__.encode()
    assert data.count(old) == 1
    fake_version = ("9" * len(torch.__version__)).encode()
    patched = tmp_path / Path(so).name
    patched.write_bytes(data.replace(old, b"ddpm_fast-build-info:torch=" + fake_version))
    env = dict(os.environ, DDPM_FAST_EXTENSION=str(patched))
    code = ("import warnings, ddpm_fast\nwarnings.simplefilter('always')\n"
            "print(ddpm_fast.backends()['cpp'])")
    res = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"built for torch {fake_version.decode()}" in res.stdout
    assert "rebuild it" in res.stderr   # the RuntimeWarning


def test_cmake_schema_source_is_generated_from_the_table(tmp_path):
    """tools/op_schemas.py (run by CMakeLists.txt) writes every table schema as one m.def."""
    out = tmp_path / "schemas.cpp"
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "op_schemas.py"), str(out)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    from ddpm_fast.ops.table import OPS
    defs = re.findall(r'm\.def\("(\w+)(\(.*\) -> .*)"\);', out.read_text())
    assert defs == [(op.name, op.schema) for op in OPS]
    assert "TORCH_LIBRARY(ddpm_fast, m)" in out.read_text()


def test_pyproject_builds_with_the_in_tree_backend_and_requires_no_torch():
    """Plain `pip install -e .` must not fetch a torch into the build environment: the build
    requirements name none, and the in-tree backend (build_backend/) brings the target's torch."""
    text = (ROOT / "pyproject.toml").read_text()
    requires = re.search(r"requires\s*=\s*\[(.*?)\]", text, re.S).group(1)
    assert "torch" not in requires
    assert re.search(r'^build-backend\s*=\s*"ddpm_fast_build"', text, re.M)
    assert re.search(r'^backend-path\s*=\s*\["build_backend"\]', text, re.M)
    assert (ROOT / "build_backend" / "ddpm_fast_build.py").is_file()


def test_backend_refuses_a_torch_of_the_build_environment_that_is_not_the_targets(tmp_path):
    """A torch importable in the build environment (PYTHONPATH, as pip's isolation sets it) but not
    in the environment being installed into must stop the build, naming both."""
    fake = tmp_path / "buildenv" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "0.0.fake"\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(ROOT / "build_backend")]))
    env.pop("DDPM_FAST_BUILD_EXT", None)
    res = subprocess.run([sys.executable, "-c", "import ddpm_fast_build as b; b.get_requires_for_build_wheel()"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "the build environment has its own torch 0.0.fake" in res.stderr, res.stderr[-2000:]
    assert torch.__file__.replace("__init__.py", "") in res.stderr


def test_compile_flags_live_in_one_file():
    """setup.py, CMakeLists.txt and check_cuda_sources.sh take the C++ standard and flags from
    csrc/compile_flags.cmake; none of them spells a flag of its own."""
    flags = dict(re.findall(r"^set\((DDPM_FAST_\w+)\s+([^)]*)\)", (ROOT / "csrc" / "compile_flags.cmake").read_text(), re.M))
    assert set(flags) == {"DDPM_FAST_CXX_STANDARD", "DDPM_FAST_CXX_FLAGS", "DDPM_FAST_LINK_FLAGS", "DDPM_FAST_CUDA_FLAGS"}
    users = {"setup.py": "compile_flags.cmake", "CMakeLists.txt": "include(${CMAKE_CURRENT_SOURCE_DIR}/csrc/compile_flags.cmake)",
             "scripts/check_cuda_sources.sh": "csrc/compile_flags.cmake"}
    for name, reference in users.items():
        text = (ROOT / name).read_text()
        assert reference in text, name
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for flag in ("-O3", "-fopenmp", "-lineinfo", "-fno-trapping-math", "-fno-math-errno"):
            assert flag not in code, f"{name} spells {flag} itself"
        assert not re.search(r"-std=c\+\+\d|_STANDARD\s+\d", code), f"{name} spells a C++ standard itself"
    assert not re.search(r"DDPM_FAST_WITH_CUDA", (ROOT / "setup.py").read_text())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.slow
def test_cuda_sources_compile_for_sm80_sm90(tmp_path):
    """`nvcc -c` of every .cu for sm_80/sm_90, with no torch headers (the CI check)."""
    res = subprocess.run(["bash", str(ROOT / "scripts" / "check_cuda_sources.sh"), str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "registers" in (tmp_path / "ptxas.log").read_text()
