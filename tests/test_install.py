"""The install commands of README.md ("Set-up"), run the way a user runs them: plain `pip install -e .`,
`pip install .` and `pip wheel --no-deps .`, no flags, in fresh virtual environments.

The builds are slow (the C++ extension); they run from a copy of the repository under
build/install-test/ (build artefacts stay out of the checkout's sources) with a persistent object
folder there (DDPM_FAST_BUILD_TEMP), so only the first run compiles everything.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.utils

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DDPM_FAST_INSTALL_TEST_DIR", ROOT / "build" / "install-test"))
SKIP_IN_COPY = shutil.ignore_patterns(".git", "build", "dist", "*.so", "__pycache__", "*.egg-info", ".venv*",
                                      ".pytest_cache", ".benchmarks", "out", "runs", ".whl")
PROBE = ("import json, ddpm_fast, ddpm_fast._C as C; print(json.dumps({'cpp': ddpm_fast.backends()['cpp'], "
         "'package': ddpm_fast.__file__, 'module': C.__file__, 'build_info': C.BUILD_INFO}))")
INSTALL_TIMEOUT_S = 3600  # a cold build on a busy 2-core machine


@pytest.fixture(scope="module")
def source() -> Path:
    """The sources, synchronised into a fixed folder by content: a file whose bytes changed is
    rewritten (a new modification time, newer than any object built from its old bytes), an unchanged
    one is left alone, so ninja (objects in CACHE/obj) recompiles only what changed since the last
    run. Copying with the checkout's own times would not do: a file edited before an object was built
    from the previous copy would look older than that stale object."""
    src = CACHE / "src"
    wanted = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        ignored = SKIP_IN_COPY(dirpath, dirnames + filenames)
        dirnames[:] = [d for d in dirnames if d not in ignored]
        for name in filenames:
            if name in ignored:
                continue
            rel = Path(dirpath, name).relative_to(ROOT)
            wanted.add(rel)
            _sync_file(ROOT / rel, src / rel)
    for path in sorted(src.rglob("*"), reverse=True):   # files and then folders of the last run only
        if path.is_file() and path.relative_to(src) not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return src


def _sync_file(origin: Path, copy: Path) -> None:
    data = origin.read_bytes()
    if copy.is_file() and copy.read_bytes() == data:
        return
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(data)
    shutil.copymode(origin, copy)


def _user_env() -> dict:
    """This process's environment without PYTHONPATH (which would import the checkout's ddpm_fast)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _build_env() -> dict:
    return dict(_user_env(), DDPM_FAST_BUILD_TEMP=str(CACHE / "obj"), PIP_DISABLE_PIP_VERSION_CHECK="1")


def _venv(path: Path, *, system_site_packages: bool) -> Path:
    """A new virtual environment; returns its python. With system_site_packages it sees the torch
    installed where this test runs, as a user's `python -m venv --system-site-packages` would."""
    cmd = [sys.executable, "-m", "venv", str(path)]
    if system_site_packages:
        # pip comes from the system site too (same pip): skipping ensurepip saves a minute
        cmd += ["--system-site-packages", "--without-pip"]
    subprocess.run(cmd, check=True, timeout=600, env=_user_env())
    python = path / "bin" / "python"
    if system_site_packages and sys.prefix != sys.base_prefix:
        # This test itself runs in a venv (e.g. .ci/run's): "system" would mean the base python,
        # which may lack torch. Chain this venv's site-packages behind the new one's, exactly
        # where system site-packages would sit (pip's build isolation hides them the same way).
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 env=_user_env(), capture_output=True, text=True, check=True).stdout.strip()
        Path(purelib, "_test_runner_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], cwd=cwd, env=_build_env(), capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S)


def _pip_ok(python: Path, *args: str, cwd: Path) -> str:
    res = _run(python, "-m", "pip", *args, cwd=cwd)
    assert res.returncode == 0, f"pip {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res.stdout + res.stderr


def _probe(python: Path, cwd: Path) -> dict:
    """What the installed package reports, imported from a folder without sources."""
    res = subprocess.run([str(python), "-c", PROBE], cwd=cwd, env=_user_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _shared_flags() -> dict:
    text = (ROOT / "csrc" / "compile_flags.cmake").read_text()
    return {k: v.split() for k, v in re.findall(r"^set\((DDPM_FAST_\w+)\s+([^)]*)\)", text, re.M)}


def _assert_compiled_with_the_shared_flags(command_file: Path) -> None:
    """Every C++ compile command in command_file (build.ninja, compile_commands.json) uses the
    standard and flags of csrc/compile_flags.cmake, and only that standard."""
    flags = _shared_flags()
    text = command_file.read_text()
    assert set(re.findall(r"-std=(?:c|gnu)\+\+\w+", text)) == {f"-std=c++{flags['DDPM_FAST_CXX_STANDARD'][0]}"}
    for flag in flags["DDPM_FAST_CXX_FLAGS"]:
        assert flag in text.split(), f"{flag} missing from {command_file}"


def _assert_no_torch_installed(output: str, python: Path) -> None:
    """The install used the torch that was there: pip fetched none, and the venv holds none."""
    assert "Collecting torch" not in output and "Downloading torch" not in output, output[-3000:]
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         env=_user_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert not (Path(own) / "torch").exists()


@pytest.mark.slow
def test_plain_pip_install_editable_then_regular_builds_against_the_installed_torch(source, tmp_path):
    python = _venv(tmp_path / "venv", system_site_packages=True)
    expected_info = f"ddpm_fast-build-info:torch={torch.__version__};"
    # a library left by an older build under another ABI tag would shadow the new _C.abi3.so
    stale = source / "ddpm_fast" / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    stale.write_bytes(b"stale")

    out = _pip_ok(python, "install", "-e", str(source), cwd=tmp_path)
    _assert_no_torch_installed(out, python)
    info = _probe(python, tmp_path)
    assert info["cpp"] == "available"
    assert Path(info["package"]).parent == source / "ddpm_fast"          # editable: the sources
    assert info["module"].endswith(".abi3.so") and info["build_info"] == expected_info
    assert not stale.exists()

    _assert_compiled_with_the_shared_flags(CACHE / "obj" / "build.ninja")

    out = _pip_ok(python, "install", str(source), cwd=tmp_path)
    _assert_no_torch_installed(out, python)
    info = _probe(python, tmp_path)
    assert info["cpp"] == "available"
    assert str(tmp_path / "venv") in info["package"]                      # regular: a copy in the venv
    assert info["build_info"] == expected_info

    # the old form keeps working (scripts/gpu_session.sh uses it on the offline GPU machine)
    _pip_ok(python, "install", "--no-build-isolation", "-e", str(source), cwd=tmp_path)
    info = _probe(python, tmp_path)
    assert info["cpp"] == "available" and Path(info["package"]).parent == source / "ddpm_fast"


@pytest.mark.slow
def test_wheel_is_abi3_and_loads_in_a_fresh_environment_with_the_same_torch(source, tmp_path):
    wheels = tmp_path / "wheels"
    _pip_ok(Path(sys.executable), "wheel", "--no-deps", "-w", str(wheels), str(source), cwd=tmp_path)
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name.endswith("-cp310-abi3-linux_x86_64.whl"), wheel.name   # one wheel for CPython >= 3.10

    python = _venv(tmp_path / "venv", system_site_packages=True)
    _pip_ok(python, "install", "--no-deps", str(wheel), cwd=tmp_path)
    info = _probe(python, tmp_path)
    assert info["cpp"] == "available"
    assert info["module"].endswith("_C.abi3.so") and str(tmp_path / "venv") in info["module"]


@pytest.mark.slow
def test_without_torch_the_install_stops_at_once_saying_to_install_torch_first(source, tmp_path):
    """README.md, "Set-up": with no torch, `pip install -e .` stops before building or resolving
    dependencies (so pip downloads no torch) with one line naming what to install first."""
    python = _venv(tmp_path / "venv", system_site_packages=False)
    res = _run(python, "-m", "pip", "install", "-e", str(source), cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    line = next((x for x in out.splitlines() if "ddpm_fast: torch is not installed" in x), None)
    assert line is not None, out[-3000:]
    assert str(tmp_path / "venv") in line and "install torch first" in line
    assert "Collecting torch" not in out and "Building editable" not in out
    assert subprocess.run([str(python), "-c", "import ddpm_fast"], cwd=tmp_path, env=_user_env(),
                          capture_output=True).returncode != 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_compiles_with_the_same_standard_and_flags_as_setup_py(tmp_path):
    """CMakeLists.txt includes csrc/compile_flags.cmake (configure only: the commands are enough)."""
    prefix = torch.utils.cmake_prefix_path
    res = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DCMAKE_BUILD_TYPE=Release",
                          "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", f"-DPython3_EXECUTABLE={sys.executable}",
                          f"-DCMAKE_PREFIX_PATH={prefix}"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    _assert_compiled_with_the_shared_flags(tmp_path / "compile_commands.json")
    link = (tmp_path / "CMakeFiles" / "ddpm_fast_ops.dir" / "link.txt").read_text().split()
    assert all(flag in link for flag in _shared_flags()["DDPM_FAST_LINK_FLAGS"])


@pytest.mark.slow
def test_pure_python_install_without_the_extension_uses_the_reference_backend(source, tmp_path):
    """README.md, "Set-up": DDPM_FAST_BUILD_EXT=0 installs without compiling; the package works on
    the reference backend and says why cpp is unavailable."""
    python = _venv(tmp_path / "venv", system_site_packages=True)
    env = dict(_build_env(), DDPM_FAST_BUILD_EXT="0")
    res = subprocess.run([str(python), "-m", "pip", "install", str(source)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    code = ("import json, ddpm_fast, torch; b = ddpm_fast.backends(); "
            "x = ddpm_fast.ops.temb_add(torch.ones(2, 3, 4, 4), torch.ones(2, 3)); "
            "print(json.dumps({'reference': b['reference'], 'cpp': b['cpp'], 'sum': float(x.sum())}))")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=_user_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["reference"] == "available" and info["sum"] == 2 * 3 * 4 * 4 * 2.0
    assert info["cpp"].startswith("unavailable") and "not built" in info["cpp"]
