"""ddim_step in Triton: one DDIM step x_t -> x_{t_prev} (Song et al. eq. 12), η-noise drawn in
the kernel (Philox stream 1) unless a noise tensor is given. ᾱ_t and ᾱ_{t_prev} read from the
schedule table on the device (``final_alpha_bar`` where t_prev < 0; NaN for t or t_prev >= T).
Layout: _common.py; non-contiguous inputs are copied to contiguous first. ``ddim_step_out`` writes
``out`` (may be x_t) and, given ``first_bad``, records the largest t[b] whose model output (either
half with guidance) has a NaN/inf (a masked atomic max).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...noise import STREAM_STEP
from ...schedule import Col
from ._common import (autotuned, div_rn, elementwise_grid, guided_model_out, guided_model_out_record, launch,
                      load_coef, load_timestep, record_bad, rows, sample_block, seed_arg, seed_offset, sqrt_rn,
                      timestep, to_compute, to_out, write_out)
from .philox import seeded_normal_block

_C_AB: tl.constexpr = tl.constexpr(int(Col.ALPHA_BAR))
_STREAM: tl.constexpr = tl.constexpr(STREAM_STEP)


@triton.jit
def ddim_step_kernel(x_ptr, m_ptr, noise_ptr, out_ptr, t_ptr, tp_ptr, table_ptr, seed_ptr, bad_ptr, sample_offset,
                     eta, clip_range, final_alpha_bar, guidance_scale, half, N, T,
                     T_STRIDE: tl.constexpr, TP_STRIDE: tl.constexpr, PRED: tl.constexpr, CLIP: tl.constexpr,
                     NOISE: tl.constexpr, SEEDED: tl.constexpr, GUIDED: tl.constexpr, RECORD: tl.constexpr,
                     F64: tl.constexpr, SEED_OFFSET: tl.constexpr, BLOCK: tl.constexpr):
    """NOISE: eta > 0 (add σ z); SEEDED: z from Philox, else from noise_ptr; GUIDED: model_out
    is [2B, N], its unconditional row of sample b ``half`` = B·N after the conditional one;
    RECORD: bad_ptr (int64) = max(*bad_ptr, t) when the model output read here has a NaN/inf."""
    QPT: tl.constexpr = 2 if out_ptr.dtype.element_ty.primitive_bitwidth == 16 else 1  # quads per 16 bytes
    b, start = sample_block(N, BLOCK)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < N
    row = b.to(tl.int64) * N
    t = load_timestep(t_ptr, b, T_STRIDE)
    tp = load_timestep(tp_ptr, b, TP_STRIDE)
    a = load_coef(table_ptr, t, T, _C_AB, F64)
    a_prev = load_coef(table_ptr, tl.maximum(tp, 0), T, _C_AB, F64)
    a_prev = to_compute(tl.where(tp >= 0, a_prev, final_alpha_bar), F64)
    sa = sqrt_rn(a, F64)
    s1a = sqrt_rn(1 - a, F64)
    x = to_compute(tl.load(x_ptr + row + offs, mask=mask), F64)
    if RECORD:
        m, bad = guided_model_out_record(m_ptr, row + offs, mask, guidance_scale, half, GUIDED, F64)
        record_bad(bad_ptr, t, bad, offs)
    else:
        m = guided_model_out(m_ptr, row + offs, mask, guidance_scale, half, GUIDED, F64)
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
    # Song et al. eq. 16, the variance factor clamped at 0 where a_prev < a (docs/ops_contract.md)
    var = tl.maximum(1 - div_rn(a, a_prev, F64), 0.0)
    sigma = eta * sqrt_rn(div_rn(1 - a_prev, 1 - a, F64), F64) * sqrt_rn(var, F64)
    direction = sqrt_rn(tl.maximum(1 - a_prev - sigma * sigma, 0.0), F64) * eps
    out = sqrt_rn(a_prev, F64) * x0 + direction
    if NOISE:
        if SEEDED:
            z = to_compute(seeded_normal_block(seed_ptr, start, sample_offset + b, t, _STREAM, BLOCK, QPT,
                                               SEED_OFFSET), F64)
        else:
            z = to_compute(tl.load(noise_ptr + row + offs, mask=mask), F64)
        out = out + sigma * z
    tl.store(out_ptr + row + offs, to_out(out, out_ptr.dtype.element_ty), mask=mask)


_tuned = autotuned(ddim_step_kernel,
                   key=["N", "T_STRIDE", "TP_STRIDE", "PRED", "CLIP", "NOISE", "SEEDED", "GUIDED", "RECORD", "F64",
                        "SEED_OFFSET"],
                   restore=["out_ptr", "bad_ptr"])


def ddim_step(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta, prediction_type, clip,
              clip_range, final_alpha_bar, guidance_scale):
    """x_{t_prev} (x_t's dtype, contiguous) from x_t, model_out [B, ...] ([2B, ...] with
    guidance_scale) (docs/ops_contract.md)."""
    return _launch(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta, prediction_type, clip,
                   clip_range, final_alpha_bar, guidance_scale,
                   torch.empty_like(x_t, memory_format=torch.contiguous_format))


def ddim_step_out(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta, prediction_type, clip,
                  clip_range, final_alpha_bar, guidance_scale, out, first_bad=None):
    """ddim_step written into ``out`` (in place when contiguous: each element is read before the
    same program writes it, so out may be x_t), with the NaN record into ``first_bad``."""
    write_out(x_t, out, lambda dst: _launch(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta,
                                            prediction_type, clip, clip_range, final_alpha_bar, guidance_scale, dst,
                                            first_bad))


def _launch(x_t, model_out, t, t_prev, table, noise, seed, sample_offset, eta, prediction_type, clip,
            clip_range, final_alpha_bar, guidance_scale, out, first_bad=None):
    x, B, N = rows(x_t)
    if x.numel() == 0:
        return out
    t, t_stride = timestep(t)
    t_prev, tp_stride = timestep(t_prev)
    has_noise = eta > 0
    seeded = has_noise and noise is None
    launch(ddim_step_kernel, _tuned, elementwise_grid(B, N),
           (x, model_out.contiguous(), x if noise is None else noise.contiguous(), out, t, t_prev,
            table.contiguous(), seed_arg(seed if seeded else None, t), t if first_bad is None else first_bad,
            sample_offset if seeded else 0,
            float(eta), float(clip_range), float(final_alpha_bar),
            0.0 if guidance_scale is None else float(guidance_scale), B * N, N, table.shape[0]),
           {"T_STRIDE": t_stride, "TP_STRIDE": tp_stride, "PRED": prediction_type, "CLIP": bool(clip),
            "NOISE": has_noise, "SEEDED": seeded, "GUIDED": guidance_scale is not None,
            "RECORD": first_bad is not None, "F64": x.dtype == torch.float64,
            "SEED_OFFSET": seeded and seed_offset(seed)})
    return out
