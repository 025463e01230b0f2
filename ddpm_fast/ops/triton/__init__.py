"""The "triton" backend: Triton kernels for every fused op, registered as torch ops
``torch.ops.ddpm_fast_triton.<op>`` (``torch.library.triton_op`` where available, so Inductor sees
the kernels; ``custom_op`` under TRITON_INTERPRET=1) and with the backend dispatcher.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (set before triton is first
imported; for tests only, it is slow). One file per op: q_sample.py, reverse_step.py,
ddim_step.py, temb_add.py, groupnorm_temb_silu.py; philox.py holds the in-kernel noise.
Launch configs: each kernel's CONFIGS (Hopper choices, ``_common.ELEMENTWISE_CONFIGS``); the
first is the default, DDPM_FAST_TRITON_AUTOTUNE=1 autotunes over all of them.
Every op copies non-contiguous inputs to contiguous and returns contiguous outputs.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton  # noqa: F401 — absolute: the Triton package; failure makes this backend unavailable

from ..autograd import attach_reference_backwards
from ..dispatch import register
from . import ddim_step as _ddim_step
from . import groupnorm_temb_silu as _groupnorm
from . import philox as _philox
from . import q_sample as _q_sample
from . import reverse_step as _reverse_step
from . import temb_add as _temb_add
from ._common import INTERPRET, AotSpec

__all__ = ["unavailable_reason", "aot_specs", "AotSpec"]

BACKEND = "triton"
_ops = torch.ops.ddpm_fast_triton
attach_reference_backwards("ddpm_fast_triton")  # training through the kernels (ops/autograd.py)


def unavailable_reason(backend: str, device_type: str) -> Optional[str]:
    """None if Triton kernels can run on ``device_type`` tensors here, else why not."""
    if device_type == "cuda":
        if INTERPRET:
            return "TRITON_INTERPRET=1 is set: Triton runs on CPU tensors only in this process"
        if not torch.cuda.is_available():
            return "no CUDA device"
        return None
    if device_type == "cpu":
        if INTERPRET:
            return None
        return "Triton runs on CPU only with TRITON_INTERPRET=1 set before triton is imported (tests)"
    return f"Triton cannot run on {device_type} tensors"


@register("philox_normal", BACKEND)
def _impl_philox_normal(seed, t, batch: int, numel: int, sample_offset: int, stream: int):
    return _ops.philox_normal(seed, t, batch, numel, sample_offset, stream)


@register("philox_uniform", BACKEND)
def _impl_philox_uniform(seed, t, batch: int, numel: int, sample_offset: int, stream: int):
    return _ops.philox_uniform(seed, t, batch, numel, sample_offset, stream)


@register("q_sample", BACKEND)
def _impl_q_sample(x0, t, table, noise):
    return _ops.q_sample(x0, t, table, noise)


@register("q_sample_seeded", BACKEND)
def _impl_q_sample_seeded(x0, t, table, seed, sample_offset: int, target_type: int):
    return _ops.q_sample_seeded(x0, t, table, seed, sample_offset, target_type)


@register("reverse_step", BACKEND)
def _impl_reverse_step(x_t, model_out, t, table, noise, seed, sample_offset: int, prediction_type: int,
                 variance_type: int, clip: bool, clip_range: float):
    return _ops.reverse_step(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type,
                             variance_type, clip, clip_range)


@register("reverse_step_out", BACKEND)
def _impl_reverse_step_out(x_t, model_out, t, table, noise, seed, sample_offset: int, prediction_type: int,
                     variance_type: int, clip: bool, clip_range: float, out):
    """reverse_step written into ``out`` (contiguous; may be x_t itself). Returns ``out``."""
    _ops.reverse_step_out(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type,
                          variance_type, clip, clip_range, out)
    return out


@register("ddim_step", BACKEND)
def _impl_ddim_step(x_t, model_out, t, t_prev, table, noise, seed, sample_offset: int, eta: float,
              prediction_type: int, clip: bool, clip_range: float, final_alpha_bar: float):
    return _ops.ddim_step(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta, prediction_type,
                          clip, clip_range, final_alpha_bar)


@register("temb_add", BACKEND)
def _impl_temb_add(h, temb):
    return _ops.temb_add(h, temb)


@register("groupnorm_temb_silu", BACKEND)
def _impl_groupnorm_temb_silu(x, weight, bias, temb, num_groups: int, eps: float, temb_mode: int, apply_silu: bool):
    return _ops.groupnorm_temb_silu(x, weight, bias, temb, num_groups, eps, temb_mode, apply_silu)


def aot_specs() -> list:
    """Every kernel specialisation the launchers can pick, for ahead-of-time compile checks.

    Contract with ``ddpm_fast.tools.gpu_check`` (issue 8): a list of ``AotSpec`` with
    ``name`` ("reverse_step[fp32,BLOCK=1024,warps=4]"), ``op``, ``fn`` (the raw @triton.jit
    JITFunction), ``signature`` (every kernel arg in order -> "*fp32" | "*fp16" | "*bf16" |
    "*fp64" | "*i64" | "i32" | "fp32" | "constexpr"), ``constexprs`` (name -> value),
    ``divisible_args`` (pointers and contiguous sizes the runtime specialises as divisible by 16:
    pass them as attrs {(index,): [["tt.divisibility", 16]]} in Triton 3.9), ``num_warps``,
    ``num_stages`` and ``elementwise`` (True for kernels whose fp32 loads/stores should be
    16-byte vectors: ld.global.v4 / st.global.v4 in the PTX). Built from each kernel's CONFIGS
    and the data dtypes its launcher supports (fp32, fp16, bf16), next to the kernel.
    Must be called in a process without TRITON_INTERPRET=1 (fn must be a JITFunction).
    """
    specs = []
    for mod in (_philox, _q_sample, _reverse_step, _ddim_step, _temb_add, _groupnorm):
        specs.extend(mod.aot_specs())
    return specs
