"""One dispatcher for every fused op: backends register implementations, callers ask by name.

Backends: "reference" (plain PyTorch, any device), "cpp" (C++ CPU kernels of the extension),
"cuda" (CUDA kernels of the extension), "triton" (Triton kernels; CUDA, or CPU under
TRITON_INTERPRET=1 for tests). "auto" picks the fastest available for the tensors' device.
Backend modules are imported lazily, inside try/except: a missing extension or Triton only
makes that backend unavailable, with the reason kept for ``backends()``.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Callable, Optional

import torch

__all__ = ["register", "register_backend", "implementation", "backends", "set_backend", "get_backend",
           "use_backend", "unavailable_reason", "backend_of", "implementations", "BackendUnavailableError",
           "BACKENDS"]

BACKENDS = ("reference", "cpp", "cuda", "triton")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpp", "reference")}
_MODULES = {"reference": "ddpm_fast.ops.reference", "cpp": "ddpm_fast.ops.extension",
            "cuda": "ddpm_fast.ops.extension", "triton": "ddpm_fast.ops.triton"}

_registry: dict[str, dict[str, Callable]] = {}
_resolved: dict[tuple, Callable] = {}  # (op, backend, device type) -> implementation
_modules: dict[str, object] = {}       # module name -> the imported backend module
_load_errors: dict[str, str] = {}      # module name -> why its import failed
_default_backend = [os.environ.get("DDPM_FAST_BACKEND", "auto")]  # process-wide default


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (not built, no device, or op not implemented)."""


def register(op: str, backend: str):
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")

    def deco(fn):
        _registry.setdefault(op, {})[backend] = fn
        _resolved.clear()
        return fn
    return deco


def register_backend(backend: str, impls: dict) -> None:
    """Register ``backend``'s implementation of every op in ``impls`` (op name -> function)."""
    for op, fn in impls.items():
        register(op, backend)(fn)


def implementations(op: str) -> dict:
    """{backend: function} of everything registered for ``op`` (a copy)."""
    return dict(_registry.get(op, {}))


def backend_of(op: str, fn: Callable) -> Optional[str]:
    """The backend whose registered implementation of ``op`` is ``fn`` (None if it is none)."""
    return next((b for b, f in _registry.get(op, {}).items() if f is fn), None)


def _load(backend: str) -> Optional[str]:
    """Import the backend's module once; None if it loaded, else the reason it did not.
    No lock: Python's import system serialises imports, and recording the outcome twice is
    harmless. Cheap backends are preloaded by ``preload()`` so that a lookup inside
    torch.compile finds everything here and never imports."""
    mod = _MODULES[backend]
    if mod not in _modules and mod not in _load_errors:
        try:
            _modules[mod] = importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 — any failure means "not available", with the reason
            _load_errors[mod] = f"{type(e).__name__}: {e}"
    return _load_errors.get(mod)


def preload(names=("reference", "cpp")) -> None:
    """Import the backends that load in milliseconds (Triton's import is slower: lazy)."""
    for b in names:
        _load(b)


def unavailable_reason(backend: str, device_type: str) -> Optional[str]:
    """Why ``backend`` cannot run ops on ``device_type`` tensors, or None if it can."""
    err = _load(backend)
    if err:
        return err
    check = getattr(_modules[_MODULES[backend]], "unavailable_reason", None)
    return check(backend, device_type) if check else None


def backends() -> dict[str, str]:
    """Each backend's status on this machine: "available" or "unavailable: <reason>"."""
    out = {}
    for b in BACKENDS:
        dev = "cuda" if b == "cuda" or (b == "triton" and torch.cuda.is_available()) else "cpu"
        if b == "triton" and dev == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            dev = "cuda"
        why = unavailable_reason(b, dev)
        out[b] = "available" if why is None else f"unavailable: {why}"
    return out


def set_backend(name: str) -> None:
    """Set the process-wide default backend ("auto" or one of BACKENDS)."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose auto or one of {BACKENDS}")
    _default_backend[0] = name


def get_backend() -> str:
    """The process-wide default backend (env DDPM_FAST_BACKEND sets it at import)."""
    return _default_backend[0]


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("reference"): ...`` — temporarily change the default backend."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def implementation(op: str, backend: Optional[str], device: torch.device) -> Callable:
    """The function implementing ``op`` for tensors on ``device`` under ``backend``.

    Resolved once per (op, backend, device type) and cached: callers in a hot loop pay a dict
    lookup. Samplers resolve before their loop so compiled/captured code never sees this."""
    name = backend or get_backend()
    key = (op, name, device.type)
    fn = _resolved.get(key)
    if fn is None:
        fn = _resolve(op, name, device.type)
        _resolved[key] = fn
    return fn


def _resolve(op: str, name: str, dtype: str) -> Callable:
    if name == "auto":
        for b in _AUTO_ORDER.get(dtype, ("reference",)):
            if unavailable_reason(b, dtype) is None and b in _registry.get(op, {}):
                return _registry[op][b]
        raise BackendUnavailableError(f"no backend implements {op} on {dtype}")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose auto or one of {BACKENDS}")
    why = unavailable_reason(name, dtype)
    if why is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run {op} on {dtype} tensors: {why}")
    fn = _registry.get(op, {}).get(name)
    if fn is None:
        raise BackendUnavailableError(f"backend {name!r} does not implement {op}")
    return fn
