"""temb_add in Triton: h + temb[:, :, None, None] (h [B, C, *spatial], temb [B, C]).

Flat layout: grid (cdiv(B*C*HW, BLOCK),), element i reads temb[i // HW] (a cached gather), so
small spatial maps (4x4) keep every lane busy. Non-contiguous inputs are copied first.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import autotuned, launch, to_compute, to_out


@triton.jit
def temb_add_kernel(h_ptr, temb_ptr, out_ptr, numel, HW, F64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    h = to_compute(tl.load(h_ptr + offs, mask=mask), F64)
    e = to_compute(tl.load(temb_ptr + offs // HW, mask=mask), F64)
    tl.store(out_ptr + offs, to_out((h + e), out_ptr.dtype.element_ty), mask=mask)


_tuned = autotuned(temb_add_kernel, key=["numel", "HW", "F64"])


def temb_add(h, temb):
    """h + temb broadcast over space, h's dtype, contiguous."""
    x = h.contiguous()
    out = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:
        return out
    hw = numel // (x.shape[0] * x.shape[1])
    launch(temb_add_kernel, _tuned, lambda meta: (triton.cdiv(numel, meta["BLOCK"]),),
           (x, temb.contiguous(), out, numel, hw), {"F64": x.dtype == torch.float64})
    return out
