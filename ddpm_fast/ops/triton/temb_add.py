"""temb_add in Triton: h + temb[:, :, None, None] (h [B, C, *spatial], temb [B, C]).

Flat layout: grid (cdiv(B*C*HW, BLOCK),), element i reads temb[i // HW] (a cached gather), so
small spatial maps (4x4) keep every lane busy. Non-contiguous inputs are copied first.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (AOT_DTYPES, ELEMENTWISE_CONFIGS, autotuned, check_data, define_op, launch, make_spec,
                      to_compute, to_out, triton_type)


@triton.jit
def temb_add_kernel(h_ptr, temb_ptr, out_ptr, numel, HW, F64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    h = to_compute(tl.load(h_ptr + offs, mask=mask), F64)
    e = to_compute(tl.load(temb_ptr + offs // HW, mask=mask), F64)
    tl.store(out_ptr + offs, to_out((h + e), out_ptr.dtype.element_ty), mask=mask)


_tuned = autotuned(temb_add_kernel, key=["numel", "HW", "F64"])


@define_op("temb_add")
def temb_add(h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """h + temb broadcast over space, h's dtype, contiguous."""
    check_data("h", h)
    check_data("temb", temb, h.device)
    if h.dim() < 2 or temb.shape != h.shape[:2]:
        raise ValueError(f"triton backend: temb must have shape [B, C] = {tuple(h.shape[:2])}, "
                         f"got {tuple(temb.shape)}")
    x = h.contiguous()
    out = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:
        return out
    hw = numel // (x.shape[0] * x.shape[1])
    launch(temb_add_kernel, _tuned, lambda meta: (triton.cdiv(numel, meta["BLOCK"]),),
           (x, temb.contiguous(), out, numel, hw), {"F64": x.dtype == torch.float64})
    return out


@temb_add.register_fake
def _(h, temb):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


def aot_specs() -> list:
    specs = []
    for cfg in ELEMENTWISE_CONFIGS:
        for tag, dt in AOT_DTYPES.items():
            ty = "*" + triton_type(dt)
            sig = {"h_ptr": ty, "temb_ptr": ty, "out_ptr": ty, "numel": "i32", "HW": "i32"}
            specs.append(make_spec("temb_add", temb_add_kernel, cfg, tag, sig, {"F64": False},
                                   elementwise=True, sizes=("numel", "HW")))
    return specs
