"""ddim_step in Triton: one DDIM step x_t -> x_{t_prev} (Song et al. eq. 12), η-noise drawn in
the kernel (Philox stream 1) unless a noise tensor is given. ᾱ_t and ᾱ_{t_prev} read from the
schedule table on the device (``final_alpha_bar`` where t_prev < 0). Grid (cdiv(N, BLOCK), B);
non-contiguous inputs are copied to contiguous first.
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
                      load_coef, load_timestep, make_spec, rows, sqrt_rn, div_rn, to_compute, to_out, triton_type)
from .philox import normal_block

_C_AB: tl.constexpr = tl.constexpr(int(Col.ALPHA_BAR))
_STREAM: tl.constexpr = tl.constexpr(STREAM_STEP)


@triton.jit
def ddim_step_kernel(x_ptr, m_ptr, noise_ptr, out_ptr, t_ptr, tp_ptr, table_ptr, seed_ptr, sample_offset,
                     eta, clip_range, final_alpha_bar, N,
                     T_STRIDE: tl.constexpr, TP_STRIDE: tl.constexpr, PRED: tl.constexpr, CLIP: tl.constexpr,
                     NOISE: tl.constexpr, SEEDED: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    """NOISE: eta > 0 (add σ z); SEEDED: z from Philox, else from noise_ptr."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    QPT: tl.constexpr = 2 if out_ptr.dtype.element_ty.primitive_bitwidth == 16 else 1  # quads per 16 bytes
    start = pid * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < N
    row = b.to(tl.int64) * N
    t = load_timestep(t_ptr, b, T_STRIDE)
    tp = load_timestep(tp_ptr, b, TP_STRIDE)
    a = load_coef(table_ptr, t, _C_AB, F64)
    a_prev = load_coef(table_ptr, tl.maximum(tp, 0), _C_AB, F64)
    a_prev = to_compute(tl.where(tp >= 0, a_prev, final_alpha_bar), F64)
    sa = sqrt_rn(a, F64)
    s1a = sqrt_rn(1 - a, F64)
    x = to_compute(tl.load(x_ptr + row + offs, mask=mask), F64)
    m = to_compute(tl.load(m_ptr + row + offs, mask=mask), F64)
    if PRED == 0:
        x0 = div_rn(x - s1a * m, sa, F64)
        eps = m
    elif PRED == 1:
        x0 = m
        eps = div_rn(x - sa * x0, s1a, F64)
    else:
        x0 = sa * x - s1a * m
        eps = sa * m + s1a * x
    if CLIP:  # clipping changes x0, so ε is re-derived from the clipped x0
        x0 = tl.clamp(x0, -clip_range, clip_range, propagate_nan=tl.PropagateNan.ALL)
        eps = div_rn(x - sa * x0, s1a, F64)
    # Song et al. eq. 16
    sigma = eta * sqrt_rn(div_rn(1 - a_prev, 1 - a, F64), F64) * sqrt_rn(1 - div_rn(a, a_prev, F64), F64)
    direction = sqrt_rn(tl.maximum(1 - a_prev - sigma * sigma, 0.0), F64) * eps
    out = sqrt_rn(a_prev, F64) * x0 + direction
    if NOISE:
        if SEEDED:
            z = to_compute(normal_block(tl.load(seed_ptr), start, sample_offset + b, t, _STREAM, BLOCK, QPT), F64)
        else:
            z = to_compute(tl.load(noise_ptr + row + offs, mask=mask), F64)
        out = out + sigma * z
    tl.store(out_ptr + row + offs, to_out(out, out_ptr.dtype.element_ty), mask=mask)


_tuned = autotuned(ddim_step_kernel,
                   key=["N", "T_STRIDE", "TP_STRIDE", "PRED", "CLIP", "NOISE", "SEEDED", "F64"])


@define_op("ddim_step")
def ddim_step(x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
              table: torch.Tensor, noise: Optional[torch.Tensor], seed: Optional[torch.Tensor], sample_offset: int,
              eta: float, prediction_type: int, clip: bool, clip_range: float,
              final_alpha_bar: float) -> torch.Tensor:
    """x_{t_prev} (x_t's dtype, contiguous) from x_t, model_out [B, ...] (docs/ops_contract.md)."""
    check_data("x_t", x_t)
    if x_t.dim() < 1:
        raise ValueError("triton backend: x_t must have a batch dim [B, ...]")
    check_data("model_out", model_out, x_t.device)
    check_same_shape("model_out", model_out, x_t)
    check_table(table, x_t.device)
    B = x_t.shape[0]
    t_stride = check_timestep("t", t, B, x_t.device)
    tp_stride = check_timestep("t_prev", t_prev, B, x_t.device)
    if prediction_type not in (0, 1, 2):
        raise ValueError(f"triton backend: prediction_type must be 0, 1 or 2, got {prediction_type}")
    if not eta >= 0:
        raise ValueError(f"triton backend: eta must be >= 0, got {eta}")
    has_noise = eta > 0
    if noise is not None:
        check_data("noise", noise, x_t.device)
        check_same_shape("noise", noise, x_t)
    elif has_noise:
        if seed is None:
            raise ValueError("triton backend: ddim_step with eta > 0 needs a noise tensor or a seed")
        check_seed(seed, x_t.device)
        check_offset(sample_offset)
    x, B, N = rows(x_t)
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    seeded = has_noise and noise is None
    launch(ddim_step_kernel, _tuned, elementwise_grid(B, N),
           (x, model_out.contiguous(), x if noise is None else noise.contiguous(), out, t, t_prev, table,
            seed.reshape(()) if seeded else t, (sample_offset & 0xFFFFFFFF) if seeded else 0,
            float(eta), float(clip_range), float(final_alpha_bar), N),
           {"T_STRIDE": t_stride, "TP_STRIDE": tp_stride, "PRED": prediction_type, "CLIP": bool(clip),
            "NOISE": has_noise, "SEEDED": seeded, "F64": x.dtype == torch.float64})
    return out


@ddim_step.register_fake
def _(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta, prediction_type, clip, clip_range,
      final_alpha_bar):
    return torch.empty_like(x_t, memory_format=torch.contiguous_format)


def aot_specs() -> list:
    specs = []
    for cfg in ELEMENTWISE_CONFIGS:
        for tag, dt in AOT_DTYPES.items():
            ty = "*" + triton_type(dt)
            sig = {"x_ptr": ty, "m_ptr": ty, "noise_ptr": ty, "out_ptr": ty, "t_ptr": "*i64", "tp_ptr": "*i64",
                   "table_ptr": "*fp64", "seed_ptr": "*i64", "sample_offset": "i32", "eta": "fp32",
                   "clip_range": "fp32", "final_alpha_bar": "fp32", "N": "i32"}
            specs.append(make_spec("ddim_step", ddim_step_kernel, cfg, tag, sig,
                                   {"T_STRIDE": 0, "TP_STRIDE": 0, "PRED": 0, "CLIP": True, "NOISE": True,
                                    "SEEDED": True, "F64": False}, elementwise=True))
    return specs
