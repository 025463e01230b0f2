"""groupnorm_temb_silu in Triton: silu(GroupNorm(x [+ temb]) [+ temb]), float32 statistics.

One program per (sample, group): the group's CPG*HW elements are contiguous. When the group
fits one block (SINGLE, groups up to 8192 elements: a 128-channel/32-group map of 32x32 is 4096)
it is read once into registers, normalised and written: one read, one write. Larger groups are
streamed twice: pass 1 merges per-chunk mean/M2 (Chan et al.; no E[x²]-E[x]² cancellation),
pass 2 normalises. Non-contiguous inputs are copied to contiguous first.

Configs: the block is picked from CONFIGS by group size (smallest block holding the group, else
the last one chunked); no autotuner here, since the choice changes the kernel's pass structure.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import USE_TRITON_OP, config_kwargs, device_guard, div_rn, sqrt_rn, to_compute, to_out

# warps chosen for 8 elements (two fp32 16-byte vectors) per thread; 16 warps max per program.
CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK": 2048}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK": 4096}, num_warps=16, num_stages=1),
    triton.Config({"BLOCK": 8192}, num_warps=16, num_stages=1),   # also the chunk of large groups
]


@triton.jit
def _zero(F64: tl.constexpr):
    if F64:
        return tl.zeros((), dtype=tl.float64)
    else:
        return tl.zeros((), dtype=tl.float32)


@triton.jit
def _load_group_chunk(x_ptr, temb_ptr, base, offs, mask, temb_base, c0, HW, TEMB: tl.constexpr,
                      F64: tl.constexpr):
    """x (+ temb before the norm) for group elements offs, and their channel index."""
    c = c0 + offs // HW
    v = to_compute(tl.load(x_ptr + base + offs, mask=mask), F64)
    if TEMB == 1:
        v = v + to_compute(tl.load(temb_ptr + temb_base + c, mask=mask), F64)
    return v, c


@triton.jit
def _finish(d, rstd, c, mask, w_ptr, b_ptr, temb_ptr, temb_base, TEMB: tl.constexpr, SILU: tl.constexpr,
            F64: tl.constexpr):
    """affine, temb after the norm, SiLU on the centred values d."""
    w = to_compute(tl.load(w_ptr + c, mask=mask), F64)
    bias = to_compute(tl.load(b_ptr + c, mask=mask), F64)
    y = d * rstd * w + bias
    if TEMB == 2:
        y = y + to_compute(tl.load(temb_ptr + temb_base + c, mask=mask), F64)
    if SILU:
        y = y * tl.sigmoid(y)
    return y


@triton.jit
def groupnorm_temb_silu_kernel(x_ptr, w_ptr, b_ptr, temb_ptr, out_ptr, C, HW, G, CPG, eps,
                               TEMB: tl.constexpr, SILU: tl.constexpr, SINGLE: tl.constexpr,
                               F64: tl.constexpr, BLOCK: tl.constexpr):
    """TEMB: 0 none, 1 before the norm, 2 after. Program pid = b * G + g."""
    pid = tl.program_id(0)
    bi = pid // G
    g = pid % G
    M = CPG * HW
    base = pid.to(tl.int64) * M          # group g of sample b starts at (b*C + g*CPG) * HW
    temb_base = bi.to(tl.int64) * C
    c0 = g * CPG
    out_ty = out_ptr.dtype.element_ty
    if SINGLE:
        offs = tl.arange(0, BLOCK)
        mask = offs < M
        v, c = _load_group_chunk(x_ptr, temb_ptr, base, offs, mask, temb_base, c0, HW, TEMB, F64)
        Mf = M.to(v.dtype)
        mean = div_rn(tl.sum(tl.where(mask, v, 0.0), axis=0), Mf, F64)
        d = tl.where(mask, v - mean, 0.0)
        var = div_rn(tl.sum(d * d, axis=0), Mf, F64)
        rstd = div_rn(1.0, sqrt_rn(var + eps, F64), F64)
        y = _finish(d, rstd, c, mask, w_ptr, b_ptr, temb_ptr, temb_base, TEMB, SILU, F64)
        tl.store(out_ptr + base + offs, to_out(y, out_ty), mask=mask)
    else:
        n_acc = _zero(F64)
        mean = _zero(F64)
        m2 = _zero(F64)
        for start in range(0, M, BLOCK):                  # pass 1: chunk mean/M2, merged
            offs = start + tl.arange(0, BLOCK)
            mask = offs < M
            v, c = _load_group_chunk(x_ptr, temb_ptr, base, offs, mask, temb_base, c0, HW, TEMB, F64)
            cnt = tl.minimum(M - start, BLOCK).to(n_acc.dtype)
            cmean = div_rn(tl.sum(tl.where(mask, v, 0.0), axis=0), cnt, F64)
            cd = tl.where(mask, v - cmean, 0.0)
            cm2 = tl.sum(cd * cd, axis=0)
            tot = n_acc + cnt
            delta = cmean - mean
            mean = mean + delta * div_rn(cnt, tot, F64)
            m2 = m2 + cm2 + delta * delta * div_rn(n_acc * cnt, tot, F64)
            n_acc = tot
        rstd = div_rn(1.0, sqrt_rn(div_rn(m2, M.to(m2.dtype), F64) + eps, F64), F64)
        for start in range(0, M, BLOCK):                  # pass 2: normalise
            offs = start + tl.arange(0, BLOCK)
            mask = offs < M
            v, c = _load_group_chunk(x_ptr, temb_ptr, base, offs, mask, temb_base, c0, HW, TEMB, F64)
            y = _finish(v - mean, rstd, c, mask, w_ptr, b_ptr, temb_ptr, temb_base, TEMB, SILU, F64)
            tl.store(out_ptr + base + offs, to_out(y, out_ty), mask=mask)


def pick_config(M: int) -> tuple[triton.Config, bool]:
    """(config, SINGLE): the smallest block holding a group of M elements, else the last, chunked."""
    for cfg in CONFIGS:
        if M <= cfg.kwargs["BLOCK"]:
            return cfg, True
    return CONFIGS[-1], False


def groupnorm_temb_silu(x, weight, bias, temb, num_groups, eps, temb_mode, apply_silu):
    """x [B, C, *spatial]; weight, bias [C]; temb [B, C] (temb_mode 1 before / 2 after the norm).
    Returns x's dtype, contiguous."""
    xc = x.contiguous()
    out = torch.empty_like(xc)
    if xc.numel() == 0:
        return out
    B, C = xc.shape[0], xc.shape[1]
    HW = xc.numel() // (B * C)
    cpg = C // num_groups
    cfg, single = pick_config(cpg * HW)
    kernel = torch.library.wrap_triton(groupnorm_temb_silu_kernel) if USE_TRITON_OP \
        else groupnorm_temb_silu_kernel
    with device_guard(xc):
        kernel[(B * num_groups,)](
            xc, weight.contiguous(), bias.contiguous(), temb.contiguous() if temb_mode else xc, out,
            C, HW, num_groups, cpg, float(eps),
            TEMB=temb_mode, SILU=bool(apply_silu), SINGLE=single, F64=xc.dtype == torch.float64,
            **config_kwargs(cfg))
    return out
