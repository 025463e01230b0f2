"""q_sample in Triton: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, ε given or drawn in the kernel
(Philox stream 2), optionally writing the training target (ε, x0 or v) in the same pass.

Layout: grid (cdiv(N, BLOCK), B), N = numel per sample; inputs copied to contiguous if they are
not. Coefficients read from the schedule table at t[b] on the device (no host sync).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ...noise import STREAM_Q_SAMPLE
from ...schedule import Col
from ._common import (AOT_DTYPES, ELEMENTWISE_CONFIGS, autotuned, check_data, check_offset, check_same_shape,
                      check_seed, check_table, check_timestep, define_op, elementwise_grid, launch,
                      load_coef, load_timestep, make_spec, rows, to_compute, to_out, triton_type)
from .philox import normal_block

_SQRT_AB: tl.constexpr = tl.constexpr(int(Col.SQRT_ALPHA_BAR))
_SQRT_1M_AB: tl.constexpr = tl.constexpr(int(Col.SQRT_ONE_MINUS_ALPHA_BAR))
_STREAM: tl.constexpr = tl.constexpr(STREAM_Q_SAMPLE)


@triton.jit
def q_sample_kernel(x0_ptr, noise_ptr, out_ptr, target_ptr, t_ptr, table_ptr, seed_ptr, sample_offset, N,
                    T_STRIDE: tl.constexpr, SEEDED: tl.constexpr, TARGET: tl.constexpr,
                    F64: tl.constexpr, BLOCK: tl.constexpr):
    """SEEDED: ε from Philox (noise_ptr unused) and target written (TARGET 0 ε, 1 x0, 2 v);
    else ε read from noise_ptr (target_ptr, seed_ptr unused)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    QPT: tl.constexpr = 2 if out_ptr.dtype.element_ty.primitive_bitwidth == 16 else 1  # quads per 16 bytes
    start = pid * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < N
    row = b.to(tl.int64) * N
    t = load_timestep(t_ptr, b, T_STRIDE)
    a = load_coef(table_ptr, t, _SQRT_AB, F64)
    s = load_coef(table_ptr, t, _SQRT_1M_AB, F64)
    x = to_compute(tl.load(x0_ptr + row + offs, mask=mask), F64)
    if SEEDED:
        eps = to_compute(normal_block(tl.load(seed_ptr), start, sample_offset + b, t, _STREAM, BLOCK, QPT), F64)
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


_tuned = autotuned(q_sample_kernel, key=["N", "T_STRIDE", "SEEDED", "TARGET", "F64"])


def _common_checks(x0, t, table):
    check_data("x0", x0)
    if x0.dim() < 1:
        raise ValueError("triton backend: x0 must have a batch dim [B, ...]")
    check_table(table, x0.device)
    return check_timestep("t", t, x0.shape[0], x0.device)


@define_op("q_sample")
def q_sample(x0: torch.Tensor, t: torch.Tensor, table: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t (x0's dtype, contiguous) = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) noise; x0, noise [B, ...]."""
    t_stride = _common_checks(x0, t, table)
    check_data("noise", noise, x0.device)
    check_same_shape("noise", noise, x0)
    x, B, N = rows(x0)
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    launch(q_sample_kernel, _tuned, elementwise_grid(B, N),
           (x, noise.contiguous(), out, out, t, table, t, 0, N),
           {"T_STRIDE": t_stride, "SEEDED": False, "TARGET": 0, "F64": x.dtype == torch.float64})
    return out


@define_op("q_sample_seeded")
def q_sample_seeded(x0: torch.Tensor, t: torch.Tensor, table: torch.Tensor, seed: torch.Tensor,
                    sample_offset: int, target_type: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target), both x0's dtype: ε from Philox stream 2 at (t[b], sample_offset + b, e);
    target = ε (0), x0 (1) or v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0 (2)."""
    t_stride = _common_checks(x0, t, table)
    if seed is None:
        raise ValueError("triton backend: q_sample_seeded needs a seed tensor")
    check_seed(seed, x0.device)
    check_offset(sample_offset)
    if target_type not in (0, 1, 2):
        raise ValueError(f"triton backend: target_type must be 0, 1 or 2, got {target_type}")
    x, B, N = rows(x0)
    out = torch.empty_like(x)
    target = torch.empty_like(x)
    if x.numel() == 0:
        return out, target
    launch(q_sample_kernel, _tuned, elementwise_grid(B, N),
           (x, x, out, target, t, table, seed.reshape(()), sample_offset & 0xFFFFFFFF, N),
           {"T_STRIDE": t_stride, "SEEDED": True, "TARGET": target_type, "F64": x.dtype == torch.float64})
    return out, target


@q_sample.register_fake
def _(x0, t, table, noise):
    return torch.empty_like(x0, memory_format=torch.contiguous_format)


@q_sample_seeded.register_fake
def _(x0, t, table, seed, sample_offset, target_type):
    return (torch.empty_like(x0, memory_format=torch.contiguous_format),
            torch.empty_like(x0, memory_format=torch.contiguous_format))


def aot_specs() -> list:
    specs = []
    for cfg in ELEMENTWISE_CONFIGS:
        for tag, dt in AOT_DTYPES.items():
            ty = "*" + triton_type(dt)
            sig = {"x0_ptr": ty, "noise_ptr": ty, "out_ptr": ty, "target_ptr": ty, "t_ptr": "*i64",
                   "table_ptr": "*fp64", "seed_ptr": "*i64", "sample_offset": "i32", "N": "i32"}
            for seeded in (False, True):
                specs.append(make_spec("q_sample_seeded" if seeded else "q_sample", q_sample_kernel, cfg, tag,
                                       sig, {"T_STRIDE": 1, "SEEDED": seeded, "TARGET": 2 if seeded else 0,
                                             "F64": False}, elementwise=True))
    return specs
