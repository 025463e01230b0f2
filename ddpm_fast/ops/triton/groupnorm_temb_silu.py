"""groupnorm_temb_silu in Triton: silu(GroupNorm(x [+ temb]) [+ temb]), float32 statistics.

Small groups (up to 8192 elements: a 128-channel/32-group map of 32x32 is 4096): one
program per (sample, group) reads the group once into registers, normalises it and writes it.

Larger groups are split across programs in two launches (pick_split): each group is cut into
S = SC x SH rectangles of channels x spatial positions, and a rectangle is walked in
[ROWS, HWB] tiles (rows = channels, so a tile's channel index is its row: no per-element
division, and HWB contiguous elements per row for wide loads). groupnorm_stats_kernel writes each
rectangle's (count, mean, M2), merged tile by tile (Chan et al.; no E[x²]-E[x]² cancellation);
groupnorm_apply_kernel merges the S partials of its group (the same formulas, vectorised over
the partials) and normalises its rectangle. x is read twice and written once, and B * G * S
programs run instead of B * G. Non-contiguous inputs are copied to contiguous first.
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
    triton.Config({"BLOCK": 8192}, num_warps=16, num_stages=1),
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
                               TEMB: tl.constexpr, SILU: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    """A group of M = CPG * HW <= BLOCK elements per program, pid = b * G + g.
    TEMB: 0 none, 1 before the norm, 2 after."""
    pid = tl.program_id(0)
    bi = pid // G
    g = pid % G
    M = CPG * HW
    base = pid.to(tl.int64) * M          # group g of sample b starts at (b*C + g*CPG) * HW
    temb_base = bi.to(tl.int64) * C
    c0 = g * CPG
    offs = tl.arange(0, BLOCK)
    mask = offs < M
    v, c = _load_group_chunk(x_ptr, temb_ptr, base, offs, mask, temb_base, c0, HW, TEMB, F64)
    Mf = M.to(v.dtype)
    mean = div_rn(tl.sum(tl.where(mask, v, 0.0), axis=0), Mf, F64)
    d = tl.where(mask, v - mean, 0.0)
    var = div_rn(tl.sum(d * d, axis=0), Mf, F64)
    rstd = div_rn(1.0, sqrt_rn(var + eps, F64), F64)
    y = _finish(d, rstd, c, mask, w_ptr, b_ptr, temb_ptr, temb_base, TEMB, SILU, F64)
    tl.store(out_ptr + base + offs, to_out(y, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rectangle(CPG, HW, G, C, S, SH, CPS, HPS):
    """This program's group, its rectangle [c_lo, c_hi) x [h_lo, h_hi) (channels of the group x
    spatial positions), the group's first element and the sample's temb row."""
    pid = tl.program_id(0)
    grp = pid // S
    k = pid % S
    kc = k // SH
    kh = k % SH
    c_lo = kc * CPS
    h_lo = kh * HPS
    c_hi = tl.minimum(c_lo + CPS, CPG)
    h_hi = tl.minimum(h_lo + HPS, HW)
    base = grp.to(tl.int64) * CPG * HW
    temb_base = (grp // G).to(tl.int64) * C + (grp % G) * CPG
    return pid, grp, c_lo, c_hi, h_lo, h_hi, base, temb_base


@triton.jit
def _tile(x_ptr, temb_ptr, base, temb_base, r0, c_hi, h0, h_hi, HW, TEMB: tl.constexpr, F64: tl.constexpr,
          ROWS: tl.constexpr, HWB: tl.constexpr):
    """[ROWS, HWB] values x (+ temb before the norm) of channels r0.., positions h0.., their
    mask and the tile's channel indices [ROWS] (within the group)."""
    ch = r0 + tl.arange(0, ROWS)
    hw = h0 + tl.arange(0, HWB)
    mask = (ch < c_hi)[:, None] & (hw < h_hi)[None, :]
    v = to_compute(tl.load(x_ptr + base + ch.to(tl.int64)[:, None] * HW + hw[None, :], mask=mask), F64)
    if TEMB == 1:
        v = v + to_compute(tl.load(temb_ptr + temb_base + ch, mask=ch < c_hi), F64)[:, None]
    return v, mask, ch


@triton.jit
def groupnorm_stats_kernel(x_ptr, temb_ptr, part_ptr, C, HW, G, CPG, S, SH, CPS, HPS,
                           TEMB: tl.constexpr, F64: tl.constexpr, ROWS: tl.constexpr, HWB: tl.constexpr):
    """part[pid] = (count, mean, M2) of this program's rectangle (see _rectangle)."""
    pid, grp, c_lo, c_hi, h_lo, h_hi, base, temb_base = _rectangle(CPG, HW, G, C, S, SH, CPS, HPS)
    n_acc = _zero(F64)
    mean = _zero(F64)
    m2 = _zero(F64)
    for r0 in range(c_lo, c_hi, ROWS):
        for h0 in range(h_lo, h_hi, HWB):
            v, mask, ch = _tile(x_ptr, temb_ptr, base, temb_base, r0, c_hi, h0, h_hi, HW, TEMB, F64, ROWS, HWB)
            cnt = (tl.minimum(c_hi - r0, ROWS) * tl.minimum(h_hi - h0, HWB)).to(n_acc.dtype)
            cmean = div_rn(tl.sum(tl.sum(tl.where(mask, v, 0.0), axis=1), axis=0), cnt, F64)
            cd = tl.where(mask, v - cmean, 0.0)
            cm2 = tl.sum(tl.sum(cd * cd, axis=1), axis=0)
            tot = n_acc + cnt
            delta = cmean - mean
            mean = mean + delta * div_rn(cnt, tot, F64)
            m2 = m2 + cm2 + delta * delta * div_rn(n_acc * cnt, tot, F64)
            n_acc = tot
    tl.store(part_ptr + pid * 3, n_acc)
    tl.store(part_ptr + pid * 3 + 1, mean)
    tl.store(part_ptr + pid * 3 + 2, m2)


@triton.jit
def groupnorm_apply_kernel(x_ptr, w_ptr, b_ptr, temb_ptr, out_ptr, part_ptr, C, HW, G, CPG, S, SH, CPS, HPS, eps,
                           TEMB: tl.constexpr, SILU: tl.constexpr, F64: tl.constexpr, ROWS: tl.constexpr,
                           HWB: tl.constexpr, SB: tl.constexpr):
    """Merges the S partials of this program's group (mean = sum n_i mean_i / n, M2 = sum M2_i +
    sum n_i (mean_i - mean)²), then normalises its rectangle."""
    pid, grp, c_lo, c_hi, h_lo, h_hi, base, temb_base = _rectangle(CPG, HW, G, C, S, SH, CPS, HPS)
    i = tl.arange(0, SB)
    pm = i < S
    p = part_ptr + (grp * S + i) * 3
    n_i = tl.load(p, mask=pm, other=0.0)
    mean_i = tl.load(p + 1, mask=pm, other=0.0)
    m2_i = tl.load(p + 2, mask=pm, other=0.0)
    n = tl.sum(n_i, axis=0)
    mean = div_rn(tl.sum(n_i * mean_i, axis=0), n, F64)
    dm = mean_i - mean
    m2 = tl.sum(m2_i, axis=0) + tl.sum(n_i * dm * dm, axis=0)
    rstd = div_rn(1.0, sqrt_rn(div_rn(m2, n, F64) + eps, F64), F64)
    out_ty = out_ptr.dtype.element_ty
    for r0 in range(c_lo, c_hi, ROWS):
        ch = r0 + tl.arange(0, ROWS)
        rm = ch < c_hi
        c = (grp % G) * CPG + ch                                 # channel index in [0, C)
        scale = rstd * to_compute(tl.load(w_ptr + c, mask=rm), F64)
        add = to_compute(tl.load(b_ptr + c, mask=rm), F64)
        if TEMB == 2:
            add = add + to_compute(tl.load(temb_ptr + temb_base + ch, mask=rm), F64)
        for h0 in range(h_lo, h_hi, HWB):
            v, mask, _ = _tile(x_ptr, temb_ptr, base, temb_base, r0, c_hi, h0, h_hi, HW, TEMB, F64, ROWS, HWB)
            y = (v - mean) * scale[:, None] + add[:, None]
            if SILU:
                y = y * tl.sigmoid(y)
            hw = h0 + tl.arange(0, HWB)
            tl.store(out_ptr + base + ch.to(tl.int64)[:, None] * HW + hw[None, :], to_out(y, out_ty), mask=mask)


def pick_config(M: int) -> triton.Config | None:
    """The smallest block holding a group of M elements (one program per group), or None: the
    group is split (pick_split)."""
    for cfg in CONFIGS:
        if M <= cfg.kwargs["BLOCK"]:
            return cfg
    return None


# the split path: [ROWS, HWB] tiles of TILE elements, 8 warps (16 elements per thread)
TILE = 4096
SPLIT_WARPS = 8
MIN_PROGRAMS = 512      # programs wanted in flight (several per SM) when B * G alone is fewer


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def pick_split(B: int, G: int, CPG: int, HW: int) -> dict:
    """Tile shape and rectangles of the split path: HWB a power of two <= HW (<= 1024), ROWS
    channels per tile; the group's CPG channels cut into SC ranges of CPS (a multiple of ROWS),
    then its HW positions into SH ranges of HPS (a multiple of HWB), so that B * G * SC * SH
    reaches MIN_PROGRAMS where the group has enough tiles."""
    HWB = min(_pow2(HW), 1024)
    ROWS = max(1, min(TILE // HWB, _pow2(CPG)))
    want = max(1, -(-MIN_PROGRAMS // (B * G)))
    sc = min(want, -(-CPG // ROWS))
    CPS = -(-(-(-CPG // sc)) // ROWS) * ROWS
    sc = -(-CPG // CPS)
    sh = max(1, min(-(-want // sc), -(-HW // HWB)))
    HPS = -(-(-(-HW // sh)) // HWB) * HWB
    sh = -(-HW // HPS)
    return {"S": sc * sh, "SH": sh, "CPS": CPS, "HPS": HPS, "ROWS": ROWS, "HWB": HWB}


def _kernel(fn):
    return torch.library.wrap_triton(fn) if USE_TRITON_OP else fn


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
    w, b = weight.contiguous(), bias.contiguous()
    tb = temb.contiguous() if temb_mode else xc
    f64 = xc.dtype == torch.float64
    cfg = pick_config(cpg * HW)
    with device_guard(xc):
        if cfg is not None:
            _kernel(groupnorm_temb_silu_kernel)[(B * num_groups,)](
                xc, w, b, tb, out, C, HW, num_groups, cpg, float(eps),
                TEMB=temb_mode, SILU=bool(apply_silu), F64=f64, **config_kwargs(cfg))
            return out
        sp = pick_split(B, num_groups, cpg, HW)
        grid = (B * num_groups * sp["S"],)
        part = torch.empty((grid[0], 3), dtype=torch.float64 if f64 else torch.float32, device=xc.device)
        rect = (sp["S"], sp["SH"], sp["CPS"], sp["HPS"])
        tiles = {"ROWS": sp["ROWS"], "HWB": sp["HWB"], "num_warps": SPLIT_WARPS, "num_stages": 1}
        _kernel(groupnorm_stats_kernel)[grid](xc, tb, part, C, HW, num_groups, cpg, *rect,
                                              TEMB=temb_mode, F64=f64, **tiles)
        _kernel(groupnorm_apply_kernel)[grid](xc, w, b, tb, out, part, C, HW, num_groups, cpg, *rect, float(eps),
                                              TEMB=temb_mode, SILU=bool(apply_silu), F64=f64,
                                              SB=_pow2(sp["S"]), **tiles)
    return out
