"""The "cpp" and "cuda" backends: the compiled extension ``ddpm_fast._C`` (csrc/).

The ops ``torch.ops.ddpm_fast.<op>`` are defined from the op table (ops/table.py: schemas and
fakes); loading the library adds their CPU kernels (csrc/cpu/) and CUDA kernels (csrc/cuda/).
This module
- refuses a library built for another torch (read from the file before it is loaded) and warns,
  so the dispatcher falls back to the reference backend;
- registers the ops with the dispatcher as backends "cpp" (CPU tensors) and "cuda" (CUDA tensors),
  in one loop over the table (ops/registration.py). Both call ``torch.ops.ddpm_fast.<op>``, which
  picks the kernel by device; float64 data, which the kernels do not take, goes to the reference
  backend. Backward passes: ops/autograd.py.

Environment: ``DDPM_FAST_EXTENSION=0`` disables the extension; ``DDPM_FAST_EXTENSION=/path/_C.so``
loads that file instead of the installed ``ddpm_fast._C``.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import warnings
from typing import Optional

import torch

from . import reference
from . import table
from .autograd import attach_reference_backwards
from .dispatch import register_backend
from .registration import implementations_of, torch_op_callers
from .table import NAMESPACE

__all__ = ["OPS", "available", "build_info", "has_cuda_kernels", "unavailable_reason"]

OPS = tuple(op.name for op in table.OPS)
_MARKER = b"ddpm_fast-build-info:torch="
_BUILD_HINT = "build it with `pip install -e .` in the repository (README.md, Set-up)"

_load_error: Optional[str] = None
_build_info: Optional[str] = None


def _library_path() -> Optional[str]:
    """The library beside this package's own files (ddpm_fast/_C.<suffix>), or the override. Not
    ``find_spec("ddpm_fast._C")``: an editable install of another checkout (setuptools' finder on
    sys.meta_path) answers for submodules of any ``ddpm_fast`` and would hand a pure-Python
    install that checkout's library, built from other sources."""
    override = os.environ.get("DDPM_FAST_EXTENSION", "")
    if override and override not in ("0", "1"):
        return override
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(package_dir, "_C" + suffix)
        if os.path.isfile(path):
            return path
    return None


def _read_build_torch(path: str) -> Optional[str]:
    """The torch version recorded in the library at build time (csrc/ops.cpp), without loading it."""
    with open(path, "rb") as f:
        data = f.read()
    i = data.find(_MARKER)
    if i < 0:
        return None
    j = data.find(b";", i)
    return data[i + len(_MARKER):j].decode("ascii", "replace")


def _registered() -> bool:
    """True when some library already registered the ddpm_fast kernels in this process (e.g. the
    CMake build loaded with torch.ops.load_library): loading a second one would define or
    register everything twice."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("ddpm_fast::reverse_step", "CPU")
    except RuntimeError:  # no such op yet
        return False


def _load() -> Optional[str]:
    """Load the library; None on success, else why not."""
    global _build_info
    if os.environ.get("DDPM_FAST_EXTENSION") == "0":
        return "disabled by DDPM_FAST_EXTENSION=0"
    if _registered():
        _build_info = "preloaded"
        try:
            table.define(NAMESPACE)  # checks the preloaded schemas against the table
        except RuntimeError as e:
            return str(e)
        return None
    path = _library_path()
    if path is None or not os.path.exists(path):
        return f"the compiled extension ddpm_fast._C is not built ({_BUILD_HINT})"
    built_for = _read_build_torch(path)
    if built_for != torch.__version__:
        msg = (f"the compiled extension {path} was built for torch {built_for or 'unknown'} but torch "
               f"{torch.__version__} is running; rebuild it ({_BUILD_HINT}). Using the reference backend.")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return msg
    try:
        # Kernels first, then the schemas (kernels may register before their op is defined). A
        # library that defines the schemas itself (the CMake build) is checked against the table.
        if os.environ.get("DDPM_FAST_EXTENSION", "") not in ("", "1"):
            torch.ops.load_library(path)
        else:
            importlib.import_module("ddpm_fast._C")
        table.define(NAMESPACE)
    except Exception as e:  # noqa: BLE001 — any load failure means "backend unavailable"
        msg = f"loading the compiled extension {path} failed: {type(e).__name__}: {e}"
        warnings.warn(msg + "; using the reference backend", RuntimeWarning, stacklevel=3)
        return msg
    _build_info = built_for
    return None


_load_error = _load()


def available() -> bool:
    """True when the extension's ops are registered in this process."""
    return _load_error is None


def build_info() -> Optional[str]:
    """The torch version the loaded extension was built for (None when not loaded)."""
    return _build_info


def has_cuda_kernels() -> bool:
    """True when every op with a CUDA kernel in the table (``OpSpec.cuda``) has it registered (the
    extension was built with CUDA)."""
    return available() and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"ddpm_fast::{op.name}", "CUDA")
        for op in table.OPS if op.cuda)


def unavailable_reason(backend: str, device_type: str) -> Optional[str]:
    """Why ``backend`` ("cpp" or "cuda") cannot run ops on ``device_type`` tensors, or None."""
    if _load_error is not None:
        return _load_error
    if backend == "cpp":
        if device_type != "cpu":
            return f"the cpp backend runs on CPU tensors only, not {device_type} (use cuda)"
        return None
    if backend == "cuda":
        if not has_cuda_kernels():
            return "the extension was built without CUDA kernels (torch without CUDA, or no nvcc at build time)"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        if device_type != "cuda":
            return f"the cuda backend runs on CUDA tensors only, not {device_type} (use cpp)"
        return None
    return f"unknown backend {backend!r}"


# --- registration, from the op table ------------------------------------------------------

if _load_error is None:
    register_backend("cpp", torch_op_callers(NAMESPACE, implementations_of(reference)))
    # CPU-only ops (OpSpec.cuda False) are not the cuda backend's: "auto" runs the reference there
    register_backend("cuda", {name: fn for name, fn in torch_op_callers(NAMESPACE, implementations_of(reference)).items()
                              if table.BY_NAME[name].cuda})
    attach_reference_backwards(NAMESPACE)  # training through the kernels (ops/autograd.py)
