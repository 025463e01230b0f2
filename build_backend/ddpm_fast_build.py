"""PEP 517 build backend of ddpm_fast: setuptools.build_meta, built against the environment's torch.

The C++/CUDA extension must be compiled against the torch that will import it. Under build
isolation (plain ``pip install .`` / ``pip install -e .``) pip runs this backend with the target
environment's own interpreter (``sys.executable``) but hides that environment's packages behind
``PYTHONPATH`` (the build environment: setuptools, wheel, ninja) and ``PYTHONNOUSERSITE``. A child
of the same interpreter without those two variables sees exactly what the installed package will
see at run time; this backend asks it where torch is, appends that environment's ``sys.path``
entries after the build environment's (so the build's own setuptools still wins), checks that
``import torch`` now resolves to that very torch, and hands over to setuptools (setup.py, which
this process execs). No torch is ever installed into the build environment. README.md
("Set-up") is the user-facing side; ddpm_fast/ops/extension.py checks again at import that the
library was built for the running torch.

With ``--no-build-isolation`` the child sees the same environment as this process, so the same
path works. ``DDPM_FAST_BUILD_EXT=0`` (pure-Python install) skips all of this.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from setuptools import build_meta as _setuptools

__all__ = ["build_editable", "build_sdist", "build_wheel", "get_requires_for_build_editable",
           "get_requires_for_build_sdist", "get_requires_for_build_wheel",
           "prepare_metadata_for_build_editable", "prepare_metadata_for_build_wheel"]

# Run in the target interpreter: where its torch is (without importing it: fast) and its sys.path.
_PROBE = ("import importlib.util, json, sys; s = importlib.util.find_spec('torch'); "
          "print(json.dumps({'torch': s.origin if s else None, 'path': sys.path, 'prefix': sys.prefix}))")
_HIDDEN_BY_PIP = ("PYTHONPATH", "PYTHONNOUSERSITE")


def _wants_extension() -> bool:
    return os.environ.get("DDPM_FAST_BUILD_EXT", "").lower() not in ("0", "false", "no", "off")


def _probe_target() -> dict:
    """What the target interpreter sees when pip's build-isolation variables are removed."""
    env = {k: v for k, v in os.environ.items() if k not in _HIDDEN_BY_PIP}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=os.path.abspath(os.sep),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _use_target_torch() -> None:
    """Make the target environment's torch importable here, or stop with what to do."""
    if not _wants_extension():
        return
    target = _probe_target()
    if target["torch"] is None:
        raise SystemExit(  # one line: what to install first
            f"ddpm_fast: torch is not installed in {target['prefix']}; install torch first "
            "(e.g. `pip install torch`), then run this command again "
            "(or DDPM_FAST_BUILD_EXT=0 for a pure-Python install without the compiled kernels)")
    for entry in target["path"]:
        if entry and os.path.isabs(entry) and os.path.exists(entry) and entry not in sys.path:
            sys.path.append(entry)  # after the build environment: its setuptools keeps priority
    import torch

    if not _same_file(torch.__file__, target["torch"]):
        raise SystemExit(
            f"ddpm_fast: the build environment has its own torch {torch.__version__} ({torch.__file__}), "
            f"not the torch of the environment being installed into ({target['torch']}); an extension "
            "built against it would not load there. Remove torch from the build requirements, or use "
            "`pip install --no-build-isolation`.")


def get_requires_for_build_wheel(config_settings=None):
    _use_target_torch()
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    _use_target_torch()
    return _setuptools.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _use_target_torch()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _use_target_torch()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _use_target_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _use_target_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


# An sdist only packs sources (MANIFEST.in): no torch needed, nothing compiled.
def get_requires_for_build_sdist(config_settings=None):
    os.environ["DDPM_FAST_BUILD_EXT"] = "0"
    return _setuptools.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory, config_settings=None):
    os.environ["DDPM_FAST_BUILD_EXT"] = "0"
    return _setuptools.build_sdist(sdist_directory, config_settings)
