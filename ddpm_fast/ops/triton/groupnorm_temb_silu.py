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

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (AOT_DTYPES, check_data, config_kwargs, define_op, div_rn, make_spec, sqrt_rn,
                      to_compute, to_out, triton_type)
from ._common import USE_TRITON_OP

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


@define_op("groupnorm_temb_silu")
def groupnorm_temb_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, temb: Optional[torch.Tensor],
                        num_groups: int, eps: float, temb_mode: int, apply_silu: bool) -> torch.Tensor:
    """x [B, C, *spatial]; weight, bias [C]; temb [B, C] (temb_mode 1 before / 2 after the norm).
    Returns x's dtype, contiguous."""
    check_data("x", x)
    if x.dim() < 2:
        raise ValueError(f"triton backend: x must be [B, C, *spatial], got shape {tuple(x.shape)}")
    B, C = x.shape[0], x.shape[1]
    if num_groups <= 0 or C % num_groups:
        raise ValueError(f"triton backend: num_groups must be a positive divisor of C={C}, got {num_groups}")
    for name, p in (("weight", weight), ("bias", bias)):
        check_data(name, p, x.device)
        if p.shape != (C,):
            raise ValueError(f"triton backend: {name} must have shape [{C}], got {tuple(p.shape)}")
    if temb_mode not in (0, 1, 2):
        raise ValueError(f"triton backend: temb_mode must be 0, 1 or 2, got {temb_mode}")
    if temb_mode:
        if temb is None:
            raise ValueError("triton backend: temb_mode 1/2 needs a temb tensor")
        check_data("temb", temb, x.device)
        if temb.shape != (B, C):
            raise ValueError(f"triton backend: temb must have shape [{B}, {C}], got {tuple(temb.shape)}")
    xc = x.contiguous()
    out = torch.empty_like(xc)
    if xc.numel() == 0:
        return out
    HW = xc.numel() // (B * C)
    cpg = C // num_groups
    cfg, single = pick_config(cpg * HW)
    kernel = torch.library.wrap_triton(groupnorm_temb_silu_kernel) if USE_TRITON_OP \
        else groupnorm_temb_silu_kernel
    kernel[(B * num_groups,)](
        xc, weight.contiguous(), bias.contiguous(), temb.contiguous() if temb_mode else xc, out,
        C, HW, num_groups, cpg, float(eps),
        TEMB=temb_mode, SILU=bool(apply_silu), SINGLE=single, F64=xc.dtype == torch.float64,
        **config_kwargs(cfg))
    return out


@groupnorm_temb_silu.register_fake
def _(x, weight, bias, temb, num_groups, eps, temb_mode, apply_silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def aot_specs() -> list:
    specs = []
    for cfg in CONFIGS:
        for tag, dt in AOT_DTYPES.items():
            ty = "*" + triton_type(dt)
            sig = {"x_ptr": ty, "w_ptr": ty, "b_ptr": ty, "temb_ptr": ty, "out_ptr": ty, "C": "i32", "HW": "i32",
                   "G": "i32", "CPG": "i32", "eps": "fp32"}
            single = [True, False] if cfg is CONFIGS[-1] else [True]
            for s in single:
                specs.append(make_spec("groupnorm_temb_silu", groupnorm_temb_silu_kernel, cfg,
                                       tag + ("" if s else ",chunked"), sig,
                                       {"TEMB": 1, "SILU": True, "SINGLE": s, "F64": False},
                                       elementwise=False, sizes=("C", "HW")))
    return specs
