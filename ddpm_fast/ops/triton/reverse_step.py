"""reverse_step in Triton: one ancestral DDPM step x_t -> x_{t-1} (Ho et al. Algorithm 2).

One read of x_t and model_out, one write; σ_t z drawn in the kernel (Philox stream 1) unless a
noise tensor is given; none at t = 0. Coefficients from the schedule table at t[b] on the device.
Layout: grid (cdiv(N, BLOCK), B); non-contiguous inputs are copied to contiguous first.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ...noise import STREAM_STEP
from ...schedule import Col
from ._common import (AOT_DTYPES, ELEMENTWISE_CONFIGS, autotuned, check_data, check_offset, check_same_shape,
                      check_seed, check_table, check_timestep, define_op, elementwise_grid, launch,
                      load_coef, load_timestep, make_spec, rows, to_compute, to_out, triton_type)
from .philox import normal_block

_C_SQRT_AB: tl.constexpr = tl.constexpr(int(Col.SQRT_ALPHA_BAR))
_C_SQRT_1M_AB: tl.constexpr = tl.constexpr(int(Col.SQRT_ONE_MINUS_ALPHA_BAR))
_C_SQRT_RECIP: tl.constexpr = tl.constexpr(int(Col.SQRT_RECIP_ALPHA_BAR))
_C_SQRT_RECIPM1: tl.constexpr = tl.constexpr(int(Col.SQRT_RECIPM1_ALPHA_BAR))
_C_COEF1: tl.constexpr = tl.constexpr(int(Col.POSTERIOR_MEAN_COEF1))
_C_COEF2: tl.constexpr = tl.constexpr(int(Col.POSTERIOR_MEAN_COEF2))
_C_SIGMA_SMALL: tl.constexpr = tl.constexpr(int(Col.SIGMA_SMALL))
_C_SIGMA_LARGE: tl.constexpr = tl.constexpr(int(Col.SIGMA_LARGE))
_STREAM: tl.constexpr = tl.constexpr(STREAM_STEP)


@triton.jit
def predict_x0(x, m, table_ptr, t, PRED: tl.constexpr, F64: tl.constexpr):
    """Step 1: x0 from the model output (PRED 0 ε, 1 x0, 2 v)."""
    if PRED == 0:
        x0 = load_coef(table_ptr, t, _C_SQRT_RECIP, F64) * x - load_coef(table_ptr, t, _C_SQRT_RECIPM1, F64) * m
    elif PRED == 1:
        x0 = m
    else:
        x0 = load_coef(table_ptr, t, _C_SQRT_AB, F64) * x - load_coef(table_ptr, t, _C_SQRT_1M_AB, F64) * m
    return x0


@triton.jit
def reverse_step_kernel(x_ptr, m_ptr, noise_ptr, out_ptr, t_ptr, table_ptr, seed_ptr, sample_offset,
                        clip_range, N,
                        T_STRIDE: tl.constexpr, PRED: tl.constexpr, VAR: tl.constexpr, CLIP: tl.constexpr,
                        SEEDED: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    QPT: tl.constexpr = 2 if out_ptr.dtype.element_ty.primitive_bitwidth == 16 else 1  # quads per 16 bytes
    start = pid * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < N
    row = b.to(tl.int64) * N
    t = load_timestep(t_ptr, b, T_STRIDE)
    x = to_compute(tl.load(x_ptr + row + offs, mask=mask), F64)
    m = to_compute(tl.load(m_ptr + row + offs, mask=mask), F64)
    x0 = predict_x0(x, m, table_ptr, t, PRED, F64)                     # 1. predicted x0
    if CLIP:                                                            # 2. clip
        x0 = tl.clamp(x0, -clip_range, clip_range, propagate_nan=tl.PropagateNan.ALL)
    mean = (load_coef(table_ptr, t, _C_COEF1, F64) * x0                 # 3. posterior mean (eq. 7)
            + load_coef(table_ptr, t, _C_COEF2, F64) * x)
    if VAR == 0:
        sigma = load_coef(table_ptr, t, _C_SIGMA_SMALL, F64)
    else:
        sigma = load_coef(table_ptr, t, _C_SIGMA_LARGE, F64)
    sigma = sigma * (t > 0).to(sigma.dtype)                             # no noise at t = 0
    if SEEDED:
        z = to_compute(normal_block(tl.load(seed_ptr), start, sample_offset + b, t, _STREAM, BLOCK, QPT), F64)
    else:
        z = to_compute(tl.load(noise_ptr + row + offs, mask=mask), F64)
    tl.store(out_ptr + row + offs, to_out((mean + sigma * z), out_ptr.dtype.element_ty), mask=mask)  # 4.


_tuned = autotuned(reverse_step_kernel, key=["N", "T_STRIDE", "PRED", "VAR", "CLIP", "SEEDED", "F64"],
                   restore=["out_ptr"])


def _launch(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type,
            clip, clip_range, out):
    check_data("x_t", x_t)
    if x_t.dim() < 1:
        raise ValueError("triton backend: x_t must have a batch dim [B, ...]")
    check_data("model_out", model_out, x_t.device)
    check_same_shape("model_out", model_out, x_t)
    check_table(table, x_t.device)
    t_stride = check_timestep("t", t, x_t.shape[0], x_t.device)
    if prediction_type not in (0, 1, 2):
        raise ValueError(f"triton backend: prediction_type must be 0, 1 or 2, got {prediction_type}")
    if variance_type not in (0, 1):
        raise ValueError(f"triton backend: variance_type must be 0 or 1, got {variance_type}")
    if noise is not None:
        check_data("noise", noise, x_t.device)
        check_same_shape("noise", noise, x_t)
    elif seed is None:
        raise ValueError("triton backend: reverse_step needs a noise tensor or a seed")
    else:
        check_seed(seed, x_t.device)
        check_offset(sample_offset)
    x, B, N = rows(x_t)
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x_t.shape or out.dtype != x_t.dtype or out.device != x_t.device \
            or not out.is_contiguous():
        raise ValueError(f"triton backend: out must be a contiguous {x_t.dtype} tensor of shape "
                         f"{tuple(x_t.shape)} on {x_t.device}")
    if x.numel() == 0:
        return out
    seeded = noise is None
    launch(reverse_step_kernel, _tuned, elementwise_grid(B, N),
           (x, model_out.contiguous(), x if seeded else noise.contiguous(), out, t, table,
            seed.reshape(()) if seeded else t, (sample_offset & 0xFFFFFFFF) if seeded else 0,
            float(clip_range), N),
           {"T_STRIDE": t_stride, "PRED": prediction_type, "VAR": variance_type, "CLIP": bool(clip),
            "SEEDED": seeded, "F64": x.dtype == torch.float64})
    return out


@define_op("reverse_step")
def reverse_step(x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor, table: torch.Tensor,
                 noise: Optional[torch.Tensor], seed: Optional[torch.Tensor], sample_offset: int,
                 prediction_type: int, variance_type: int, clip: bool, clip_range: float) -> torch.Tensor:
    """x_{t-1} (x_t's dtype, contiguous) from x_t, model_out [B, ...] (docs/ops_contract.md)."""
    return _launch(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type,
                   clip, clip_range, None)


@define_op("reverse_step_out", mutates_args=("out",))
def reverse_step_out(x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor, table: torch.Tensor,
                     noise: Optional[torch.Tensor], seed: Optional[torch.Tensor], sample_offset: int,
                     prediction_type: int, variance_type: int, clip: bool, clip_range: float,
                     out: torch.Tensor) -> None:
    """reverse_step writing into ``out`` (contiguous, x_t's shape and dtype; may be x_t itself:
    each element is read before it is written by the same thread)."""
    _launch(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type,
            clip, clip_range, out)


@reverse_step.register_fake
def _(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type, clip, clip_range):
    return torch.empty_like(x_t, memory_format=torch.contiguous_format)


@reverse_step_out.register_fake
def _(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type, clip, clip_range,
      out):
    return None


def aot_specs() -> list:
    specs = []
    for cfg in ELEMENTWISE_CONFIGS:
        for tag, dt in AOT_DTYPES.items():
            ty = "*" + triton_type(dt)
            sig = {"x_ptr": ty, "m_ptr": ty, "noise_ptr": ty, "out_ptr": ty, "t_ptr": "*i64",
                   "table_ptr": "*fp64", "seed_ptr": "*i64", "sample_offset": "i32", "clip_range": "fp32",
                   "N": "i32"}
            specs.append(make_spec("reverse_step", reverse_step_kernel, cfg, tag, sig,
                                   {"T_STRIDE": 0, "PRED": 0, "VAR": 0, "CLIP": True, "SEEDED": True,
                                    "F64": False}, elementwise=True))
    return specs
