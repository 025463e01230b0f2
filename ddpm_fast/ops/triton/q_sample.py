"""q_sample in Triton: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, ε given or drawn in the kernel
(Philox stream 2), optionally writing the training target (ε, x0 or v) in the same pass.

Layout: _common.py (one program per sample and block); inputs copied to contiguous if they are
not. Coefficients read from the schedule table at t[b] on the device (no host sync).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ...noise import STREAM_Q_SAMPLE
from ...schedule import Col
from ._common import (autotuned, elementwise_grid, launch, load_coef, load_timestep, rows, sample_block,
                      seed_arg, seed_offset, timestep, to_compute, to_out)
from .philox import seeded_normal_block

_SQRT_AB: tl.constexpr = tl.constexpr(int(Col.SQRT_ALPHA_BAR))
_SQRT_1M_AB: tl.constexpr = tl.constexpr(int(Col.SQRT_ONE_MINUS_ALPHA_BAR))
_STREAM: tl.constexpr = tl.constexpr(STREAM_Q_SAMPLE)


@triton.jit
def q_sample_kernel(x0_ptr, noise_ptr, out_ptr, target_ptr, t_ptr, table_ptr, seed_ptr, sample_offset, N, T,
                    T_STRIDE: tl.constexpr, SEEDED: tl.constexpr, TARGET: tl.constexpr,
                    F64: tl.constexpr, SEED_OFFSET: tl.constexpr, BLOCK: tl.constexpr):
    """SEEDED: ε from Philox (noise_ptr unused) and target written (TARGET 0 ε, 1 x0, 2 v);
    else ε read from noise_ptr (target_ptr, seed_ptr unused)."""
    QPT: tl.constexpr = 2 if out_ptr.dtype.element_ty.primitive_bitwidth == 16 else 1  # quads per 16 bytes
    b, start = sample_block(N, BLOCK)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < N
    row = b.to(tl.int64) * N
    t = load_timestep(t_ptr, b, T_STRIDE)
    a = load_coef(table_ptr, t, T, _SQRT_AB, F64)
    s = load_coef(table_ptr, t, T, _SQRT_1M_AB, F64)
    x = to_compute(tl.load(x0_ptr + row + offs, mask=mask), F64)
    if SEEDED:
        eps = to_compute(seeded_normal_block(seed_ptr, start, sample_offset + b, t, _STREAM, BLOCK, QPT, SEED_OFFSET),
                         F64)
    else:
        eps = to_compute(tl.load(noise_ptr + row + offs, mask=mask), F64)
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + row + offs, to_out((a * x + s * eps), out_ty), mask=mask)
    if SEEDED:
        if TARGET == 0:
            tgt = eps
        elif TARGET == 1:
            tgt = x
        else:
            tgt = a * eps - s * x
        tl.store(target_ptr + row + offs, to_out(tgt, out_ty), mask=mask)


_tuned = autotuned(q_sample_kernel, key=["N", "T_STRIDE", "SEEDED", "TARGET", "F64", "SEED_OFFSET"])


def q_sample(x0, t, table, noise):
    """x_t (x0's dtype, contiguous) = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) noise; x0, noise [B, ...]."""
    x, B, N = rows(x0)
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    t, t_stride = timestep(t)
    launch(q_sample_kernel, _tuned, elementwise_grid(B, N),
           (x, noise.contiguous(), out, out, t, table.contiguous(), t, 0, N, table.shape[0]),
           {"T_STRIDE": t_stride, "SEEDED": False, "TARGET": 0, "F64": x.dtype == torch.float64,
            "SEED_OFFSET": False})
    return out


def q_sample_seeded(x0, t, table, seed, sample_offset, target_type):
    """(x_t, target), both x0's dtype: ε from Philox stream 2 at (t[b], sample_offset + b, e);
    target = ε (0), x0 (1) or v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0 (2)."""
    x, B, N = rows(x0)
    out = torch.empty_like(x)
    target = torch.empty_like(x)
    if x.numel() == 0:
        return out, target
    t, t_stride = timestep(t)
    launch(q_sample_kernel, _tuned, elementwise_grid(B, N),
           (x, x, out, target, t, table.contiguous(), seed_arg(seed, t), sample_offset, N, table.shape[0]),
           {"T_STRIDE": t_stride, "SEEDED": True, "TARGET": target_type, "F64": x.dtype == torch.float64,
            "SEED_OFFSET": seed_offset(seed)})
    return out, target
