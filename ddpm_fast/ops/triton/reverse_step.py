"""reverse_step in Triton: one ancestral DDPM step x_t -> x_{t-1} (Ho et al. Algorithm 2).

One read of x_t and model_out (of each half with classifier-free guidance), one write; σ_t z
drawn in the kernel (Philox stream 1) unless a noise tensor is given; none at t = 0.
Coefficients from the schedule table at t[b] on the device. Layout: _common.py (one program per
sample and block); non-contiguous inputs are copied to contiguous first. ``reverse_step_out``
writes ``out`` (contiguous; may be x_t itself) and, given ``first_bad``, records the largest t[b]
whose model output (either half with guidance) has a NaN/inf: a masked atomic max.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...noise import STREAM_STEP
from ...schedule import Col
from ._common import (autotuned, elementwise_grid, guided_model_out, guided_model_out_record, launch, load_coef,
                      load_timestep, record_bad, rows, sample_block, seed_arg, seed_offset, timestep, to_compute,
                      to_out, write_out)
from .philox import seeded_normal_block

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
def predict_x0(x, m, table_ptr, t, T, PRED: tl.constexpr, F64: tl.constexpr):
    """Step 1: x0 from the model output (PRED 0 ε, 1 x0, 2 v)."""
    if PRED == 0:
        x0 = load_coef(table_ptr, t, T, _C_SQRT_RECIP, F64) * x - load_coef(table_ptr, t, T, _C_SQRT_RECIPM1, F64) * m
    elif PRED == 1:
        x0 = m
    else:
        x0 = load_coef(table_ptr, t, T, _C_SQRT_AB, F64) * x - load_coef(table_ptr, t, T, _C_SQRT_1M_AB, F64) * m
    return x0


@triton.jit
def reverse_step_kernel(x_ptr, m_ptr, noise_ptr, out_ptr, t_ptr, table_ptr, seed_ptr, bad_ptr, sample_offset,
                        clip_range, guidance_scale, half, N, T,
                        T_STRIDE: tl.constexpr, PRED: tl.constexpr, VAR: tl.constexpr, CLIP: tl.constexpr,
                        SEEDED: tl.constexpr, GUIDED: tl.constexpr, RECORD: tl.constexpr, F64: tl.constexpr,
                        SEED_OFFSET: tl.constexpr, BLOCK: tl.constexpr):
    """GUIDED: model_out is [2B, N]; its unconditional row of sample b starts ``half`` = B·N later.
    RECORD: bad_ptr (int64) = max(*bad_ptr, t) when the model output read here has a NaN/inf."""
    QPT: tl.constexpr = 2 if out_ptr.dtype.element_ty.primitive_bitwidth == 16 else 1  # quads per 16 bytes
    b, start = sample_block(N, BLOCK)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < N
    row = b.to(tl.int64) * N
    t = load_timestep(t_ptr, b, T_STRIDE)
    x = to_compute(tl.load(x_ptr + row + offs, mask=mask), F64)
    if RECORD:                                                          # 0. guidance, NaN record
        m, bad = guided_model_out_record(m_ptr, row + offs, mask, guidance_scale, half, GUIDED, F64)
        record_bad(bad_ptr, t, bad, offs)
    else:
        m = guided_model_out(m_ptr, row + offs, mask, guidance_scale, half, GUIDED, F64)
    x0 = predict_x0(x, m, table_ptr, t, T, PRED, F64)                     # 1. predicted x0
    if CLIP:                                                            # 2. clip
        x0 = tl.clamp(x0, -clip_range, clip_range, propagate_nan=tl.PropagateNan.ALL)
    mean = (load_coef(table_ptr, t, T, _C_COEF1, F64) * x0                 # 3. posterior mean (eq. 7)
            + load_coef(table_ptr, t, T, _C_COEF2, F64) * x)
    if VAR == 0:
        sigma = load_coef(table_ptr, t, T, _C_SIGMA_SMALL, F64)
    else:
        sigma = load_coef(table_ptr, t, T, _C_SIGMA_LARGE, F64)
    sigma = sigma * (t > 0).to(sigma.dtype)                             # no noise at t = 0
    if SEEDED:
        z = to_compute(seeded_normal_block(seed_ptr, start, sample_offset + b, t, _STREAM, BLOCK, QPT, SEED_OFFSET),
                       F64)
    else:
        z = to_compute(tl.load(noise_ptr + row + offs, mask=mask), F64)
    tl.store(out_ptr + row + offs, to_out((mean + sigma * z), out_ptr.dtype.element_ty), mask=mask)  # 4.


_tuned = autotuned(reverse_step_kernel,
                   key=["N", "T_STRIDE", "PRED", "VAR", "CLIP", "SEEDED", "GUIDED", "RECORD", "F64", "SEED_OFFSET"],
                   restore=["out_ptr", "bad_ptr"])


def _launch(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type,
            clip, clip_range, guidance_scale, out, first_bad=None):
    x, B, N = rows(x_t)
    if x.numel() == 0:
        return out
    t, t_stride = timestep(t)
    seeded = noise is None
    launch(reverse_step_kernel, _tuned, elementwise_grid(B, N),
           (x, model_out.contiguous(), x if seeded else noise.contiguous(), out, t, table.contiguous(),
            seed_arg(seed if seeded else None, t), t if first_bad is None else first_bad,
            sample_offset if seeded else 0, float(clip_range),
            0.0 if guidance_scale is None else float(guidance_scale), B * N, N, table.shape[0]),
           {"T_STRIDE": t_stride, "PRED": prediction_type, "VAR": variance_type, "CLIP": bool(clip),
            "SEEDED": seeded, "GUIDED": guidance_scale is not None, "RECORD": first_bad is not None,
            "F64": x.dtype == torch.float64, "SEED_OFFSET": seeded and seed_offset(seed)})
    return out


def reverse_step(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type,
                 clip, clip_range, guidance_scale):
    """x_{t-1} (x_t's dtype, contiguous) from x_t, model_out [B, ...] ([2B, ...] with
    guidance_scale) (docs/ops_contract.md)."""
    return _launch(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type,
                   clip, clip_range, guidance_scale, torch.empty_like(x_t, memory_format=torch.contiguous_format))


def reverse_step_out(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type, variance_type,
                     clip, clip_range, guidance_scale, out, first_bad=None):
    """reverse_step written into ``out``: in place when it is contiguous (each element is read
    before the same thread writes it, so out may be x_t), else through a temporary; the NaN record
    into ``first_bad`` (int64 [] / [1]) in the same pass."""
    write_out(x_t, out, lambda dst: _launch(x_t, model_out, t, table, noise, seed, sample_offset, prediction_type,
                                            variance_type, clip, clip_range, guidance_scale, dst, first_bad))
