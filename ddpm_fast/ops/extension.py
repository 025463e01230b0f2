"""The "cpp" and "cuda" backends: the compiled extension ``ddpm_fast._C`` (csrc/).

Loading the library registers the ops ``torch.ops.ddpm_fast.<op>`` (schemas in csrc/ops.cpp,
CPU kernels in csrc/cpu/, CUDA kernels in csrc/cuda/). This module
- refuses a library built for another torch (the version is read from the file before it is
  loaded) and warns, so the dispatcher falls back to the reference backend;
- registers fake (meta) kernels, so ``torch.compile(fullgraph=True)`` traces the ops (backward
  passes come from ops/autograd.py: the reference twin recomputed under autograd);
- registers the ops with the dispatcher as backends "cpp" (CPU tensors) and "cuda" (CUDA tensors).
  Both call ``torch.ops.ddpm_fast.<op>``, which picks the kernel by device. float64 data, which
  the kernels do not take, is routed to the reference backend.

Environment: ``DDPM_FAST_EXTENSION=0`` disables the extension; ``DDPM_FAST_EXTENSION=/path/_C.so``
loads that file instead of the installed ``ddpm_fast._C``.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Optional

import torch

from . import reference
from .dispatch import register

__all__ = ["OPS", "available", "build_info", "has_cuda_kernels", "unavailable_reason"]

OPS = ("_philox4x32_10", "philox_normal", "philox_uniform", "q_sample", "q_sample_seeded", "reverse_step",
       "reverse_step_out", "ddim_step", "temb_add", "groupnorm_temb_silu")
_MARKER = b"ddpm_fast-build-info:torch="
_BUILD_HINT = "build it with `pip install --no-build-isolation -e .` in the repository"

_load_error: Optional[str] = None
_build_info: Optional[str] = None


def _library_path() -> Optional[str]:
    override = os.environ.get("DDPM_FAST_EXTENSION", "")
    if override and override not in ("0", "1"):
        return override
    spec = importlib.util.find_spec("ddpm_fast._C")
    return spec.origin if spec is not None else None


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
    """True when some library already defined the ddpm_fast ops in this process (e.g. the CMake
    build loaded with torch.ops.load_library): loading a second one would abort the process."""
    return torch._C._dispatch_has_kernel("ddpm_fast::reverse_step")


def _load() -> Optional[str]:
    """Load the library; None on success, else why not."""
    global _build_info
    if os.environ.get("DDPM_FAST_EXTENSION") == "0":
        return "disabled by DDPM_FAST_EXTENSION=0"
    if _registered():
        _build_info = "preloaded"
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
        if os.environ.get("DDPM_FAST_EXTENSION", "") not in ("", "1"):
            torch.ops.load_library(path)
        else:
            importlib.import_module("ddpm_fast._C")
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
    """True when every op has a CUDA kernel registered (the extension was built with CUDA)."""
    return available() and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"ddpm_fast::{op}", "CUDA") for op in OPS)


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


# --- fake (meta) kernels: shapes and dtypes only, for torch.compile and FakeTensor -------------

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check_data(name: str, x: torch.Tensor) -> None:
    torch._check(x.dtype in _FLOATS, lambda: f"{name} must be float32, float16 or bfloat16, got {x.dtype}")


def _check_same_shape(name: str, x: torch.Tensor, ref: torch.Tensor) -> None:
    torch._check(x.shape == ref.shape, lambda: f"{name} has shape {tuple(x.shape)}, expected {tuple(ref.shape)}")


def _check_step(x, m, t, table, noise):
    _check_data("x_t", x)
    _check_data("model_out", m)
    _check_same_shape("model_out", m, x)
    torch._check(t.dtype in (torch.int32, torch.int64), lambda: f"t must be int32/int64, got {t.dtype}")
    torch._check(table.dtype == torch.float64 and table.dim() == 2, lambda: "table must be float64 [T, 16]")
    if noise is not None:
        _check_same_shape("noise", noise, x)


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _register_fakes() -> None:
    lib = "ddpm_fast::"

    def philox_fake(seed, t, batch, numel, sample_offset, stream):
        return seed.new_empty((batch, numel), dtype=torch.float32)

    @torch.library.register_fake(lib + "_philox4x32_10")
    def _(counters, key):
        return torch.empty_like(counters, memory_format=torch.contiguous_format)

    torch.library.register_fake(lib + "philox_normal")(philox_fake)
    torch.library.register_fake(lib + "philox_uniform")(philox_fake)

    @torch.library.register_fake(lib + "q_sample")
    def _(x0, t, table, noise):
        _check_data("x0", x0)
        _check_data("noise", noise)
        _check_same_shape("noise", noise, x0)
        return _empty_like(x0)

    @torch.library.register_fake(lib + "q_sample_seeded")
    def _(x0, t, table, seed, sample_offset, target_type):
        _check_data("x0", x0)
        return _empty_like(x0), _empty_like(x0)

    @torch.library.register_fake(lib + "reverse_step")
    def _(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type, clip,
          clip_range):
        _check_step(x_t, model_out, t, table, noise)
        return _empty_like(x_t)

    @torch.library.register_fake(lib + "reverse_step_out")
    def _(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type, clip,
          clip_range, out):
        _check_step(x_t, model_out, t, table, noise)
        torch._check(out.dtype == x_t.dtype, lambda: f"out must be {x_t.dtype}, got {out.dtype}")
        _check_same_shape("out", out, x_t)
        return None

    @torch.library.register_fake(lib + "ddim_step")
    def _(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta, prediction_type, clip,
          clip_range, final_alpha_bar):
        _check_step(x_t, model_out, t, table, noise)
        return _empty_like(x_t)

    @torch.library.register_fake(lib + "temb_add")
    def _(h, temb):
        _check_data("h", h)
        _check_data("temb", temb)
        torch._check(temb.dim() == 2 and temb.shape == h.shape[:2],
                     lambda: f"temb must have shape {tuple(h.shape[:2])}, got {tuple(temb.shape)}")
        return _empty_like(h)

    @torch.library.register_fake(lib + "groupnorm_temb_silu")
    def _(x, weight, bias, temb, num_groups, eps, temb_mode, apply_silu):
        _check_data("x", x)
        torch._check(x.dim() >= 3, lambda: f"x must be [B, C, *spatial], got {tuple(x.shape)}")
        torch._check(weight.shape == x.shape[1:2] and bias.shape == x.shape[1:2],
                     lambda: "weight and bias must have shape [C]")
        if temb is not None:
            torch._check(temb.shape == x.shape[:2], lambda: "temb must have shape [B, C]")
        return _empty_like(x)


# --- dispatcher registration ------------------------------------------------------------------

def _has_f64(*tensors) -> bool:
    return any(isinstance(x, torch.Tensor) and x.dtype == torch.float64 for x in tensors)


def _register_backends() -> None:
    ops = torch.ops.ddpm_fast

    def philox_normal(seed, t, batch, numel, sample_offset, stream):
        return ops.philox_normal(seed, t, batch, numel, sample_offset, stream)

    def philox_uniform(seed, t, batch, numel, sample_offset, stream):
        return ops.philox_uniform(seed, t, batch, numel, sample_offset, stream)

    def q_sample(x0, t, table, noise):
        if _has_f64(x0, noise):
            return reference.q_sample(x0, t, table, noise)
        return ops.q_sample(x0, t, table, noise)

    def q_sample_seeded(x0, t, table, seed, sample_offset, target_type):
        if _has_f64(x0):
            return reference.q_sample_seeded(x0, t, table, seed, sample_offset, target_type)
        return ops.q_sample_seeded(x0, t, table, seed, sample_offset, target_type)

    def reverse_step(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type,
                     clip, clip_range):
        if _has_f64(x_t, model_out, noise):
            return reference.reverse_step(x_t, model_out, t, table, noise, seed, sample_offset,
                                          prediction_type, variance_type, clip, clip_range)
        return ops.reverse_step(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type,
                                variance_type, clip, clip_range)

    def reverse_step_out(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type,
                         variance_type, clip, clip_range, out):
        """reverse_step written into ``out`` (the sampler's static buffer; may be x_t itself)."""
        if _has_f64(x_t, model_out, noise):
            return out.copy_(reference.reverse_step(x_t, model_out, t, table, noise, seed, sample_offset,
                                                    prediction_type, variance_type, clip, clip_range))
        ops.reverse_step_out(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type,
                             variance_type, clip, clip_range, out)
        return out

    def ddim_step(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta, prediction_type, clip,
                  clip_range, final_alpha_bar):
        if _has_f64(x_t, model_out, noise):
            return reference.ddim_step(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta,
                                       prediction_type, clip, clip_range, final_alpha_bar)
        return ops.ddim_step(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta,
                             prediction_type, clip, clip_range, final_alpha_bar)

    def temb_add(h, temb):
        if _has_f64(h, temb):
            return reference.temb_add(h, temb)
        return ops.temb_add(h, temb)

    def groupnorm_temb_silu(x, weight, bias, temb, num_groups, eps, temb_mode, apply_silu):
        if _has_f64(x, weight, bias, temb):
            return reference.groupnorm_temb_silu(x, weight, bias, temb, num_groups, eps, temb_mode, apply_silu)
        return ops.groupnorm_temb_silu(x, weight, bias, temb, num_groups, eps, temb_mode, apply_silu)

    for fn in (philox_normal, philox_uniform, q_sample, q_sample_seeded, reverse_step, reverse_step_out,
               ddim_step, temb_add, groupnorm_temb_silu):
        register(fn.__name__, "cpp")(fn)
        register(fn.__name__, "cuda")(fn)


if _load_error is None:
    _register_fakes()
    _register_backends()
    from .autograd import attach_reference_backwards
    attach_reference_backwards("ddpm_fast")  # training through the kernels (ops/autograd.py)
