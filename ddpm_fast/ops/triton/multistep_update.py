"""multistep_update in Triton: one step of a multistep solver (DPM-Solver++, UniPC) as one
pass, x0 = a x + b m and x_next = c_x x + c_0 x0 + sum_k c_k history[k], the coefficients one
float64 row of the table read on the device at ``step`` (NaN for a step outside the table, as
the CUDA kernel gives). History depth K (0..3) is a compile-time constant; with classifier-free
guidance (GUIDED) model_out is [2N] flat and each half is read once (guided_model_out). Layout: _common.py;
non-contiguous inputs are copied to contiguous first.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..enums import MS_HISTORY, MS_WIDTH, MS_X, MS_X0, MS_X0_M, MS_X0_X
from ._common import autotuned, elementwise_grid, guided_model_out, launch, to_compute, to_out

_W: tl.constexpr = tl.constexpr(MS_WIDTH)
_CA: tl.constexpr = tl.constexpr(MS_X0_X)
_CB: tl.constexpr = tl.constexpr(MS_X0_M)
_CX: tl.constexpr = tl.constexpr(MS_X)
_C0: tl.constexpr = tl.constexpr(MS_X0)
_CH: tl.constexpr = tl.constexpr(MS_HISTORY)


@triton.jit
def _coef(table_ptr, s, S, COL: tl.constexpr, F64: tl.constexpr):
    """table[s, COL] in the compute dtype; NaN (and an in-bounds load) for s outside [0, S)."""
    ok = (s >= 0) & (s < S)
    v = tl.load(table_ptr + tl.where(ok, s, 0) * _W + COL)
    return to_compute(tl.where(ok, v, float("nan")), F64)


@triton.jit
def _add_history(acc, h_ptr, table_ptr, s, S, k: tl.constexpr, N, offs, mask, F64: tl.constexpr):
    h = to_compute(tl.load(h_ptr + k * N + offs, mask=mask), F64)
    return acc + _coef(table_ptr, s, S, _CH + k, F64) * h


@triton.jit
def multistep_update_kernel(x_ptr, m_ptr, h_ptr, out_ptr, x0_ptr, table_ptr, step_ptr, guidance_scale, N, S,
                            K: tl.constexpr, GUIDED: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    s = tl.load(step_ptr).to(tl.int64)
    x = to_compute(tl.load(x_ptr + offs, mask=mask), F64)
    m = guided_model_out(m_ptr, offs, mask, guidance_scale, N, GUIDED, F64)
    x0 = _coef(table_ptr, s, S, _CA, F64) * x + _coef(table_ptr, s, S, _CB, F64) * m
    out = _coef(table_ptr, s, S, _CX, F64) * x + _coef(table_ptr, s, S, _C0, F64) * x0
    if K > 0:
        out = _add_history(out, h_ptr, table_ptr, s, S, 0, N, offs, mask, F64)
    if K > 1:
        out = _add_history(out, h_ptr, table_ptr, s, S, 1, N, offs, mask, F64)
    if K > 2:
        out = _add_history(out, h_ptr, table_ptr, s, S, 2, N, offs, mask, F64)
    tl.store(out_ptr + offs, to_out(out, out_ptr.dtype.element_ty), mask=mask)
    tl.store(x0_ptr + offs, to_out(x0, x0_ptr.dtype.element_ty), mask=mask)


_tuned = autotuned(multistep_update_kernel, key=["N", "K", "GUIDED", "F64"])


def multistep_update(x, model_out, history, table, step, guidance_scale):
    """(x_next, x0) in x's dtype, contiguous (docs/ops_contract.md)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    x0 = torch.empty_like(x)
    N = x.numel()
    if N == 0:
        return out, x0
    K = history.shape[0]
    launch(multistep_update_kernel, _tuned, elementwise_grid(1, N),
           (x, model_out.contiguous(), history.contiguous() if K else x, out, x0, table.contiguous(),
            step.reshape(-1).contiguous(), 0.0 if guidance_scale is None else float(guidance_scale), N,
            table.shape[0]),
           {"K": K, "GUIDED": guidance_scale is not None, "F64": x.dtype == torch.float64})
    return out, x0
