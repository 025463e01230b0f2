"""One sampler step as the loops call it, resolved once before the loop.

``make_step_(spec)`` returns ``step_(x, model_out, t, t_prev, seed, i, bad, history)``: it writes
x_prev into the state buffer ``x`` in place and records a non-finite model output in ``bad``
(int64 [1] on the device: max(bad, t) of a bad step; None: no record). Every loop (eager,
compiled, captured) calls it, so they share one rule:

- a plain DDPM or DDIM step (guidance fused into the kernel or absent) is ONE op, the backend's
  ``reverse_step_out`` / ``ddim_step_out``, writing x in place (the contract allows out = x_t) and
  recording the NaN/inf in the same pass (``first_bad``, docs/ops_contract.md). The op, the
  schedule table and every constant argument are bound here once; nothing is looked up per step.
- the other steps (a learned-variance model, an x0 pre-step, a guidance rescale, the multistep
  solvers) run ``SamplerSpec.step`` and keep a separate record (``record_nonfinite``, two small
  ops): their model output is transformed before any fused kernel reads it.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..ops import implementation
from ..ops.enums import VARIANCE_TYPES

SamplerSpec = Any   # samplers/loop.py's (which imports this module: no import back)

__all__ = ["fused_step_op", "make_step_", "record_nonfinite"]


def fused_step_op(spec: SamplerSpec) -> Optional[str]:
    """"reverse_step_out" or "ddim_step_out" when the spec's step is one plain fused step (the NaN
    record then happens in the kernel); None when the model output is reworked first."""
    if spec.multistep or spec.learned_variance is not None or spec.needs_pre_step:
        return None
    if spec.guided and spec.fused_guidance is None:   # a rescale: the combine runs before the step
        return None
    return "reverse_step_out" if spec.sampler == "ddpm" else "ddim_step_out"


def record_nonfinite(model_out: torch.Tensor, t: torch.Tensor, bad: torch.Tensor) -> None:
    """bad = max(bad, t) when model_out holds a NaN/inf (the record of the unfused steps; t [B]
    holds one timestep for the whole batch in the samplers). Device ops only: no host sync."""
    worst = torch.where(torch.isfinite(model_out).all(), -1, t[:1])
    bad.copy_(torch.maximum(bad, worst))


def make_step_(spec: SamplerSpec) -> Callable:
    """The step of ``spec`` writing into x in place (see the module docstring)."""
    op = fused_step_op(spec)
    if op is None:
        return _general_step_(spec)
    impl = implementation(op, spec.backend, spec.device)
    table, offset, pred, clip, clip_range = (spec.table, spec.sample_offset, spec.pred_code, spec.clip_denoised,
                                             spec.clip_range)
    w = spec.fused_guidance
    if op == "reverse_step_out":
        var = VARIANCE_TYPES[spec.variance_type]

        def reverse_step_(x, model_out, t, t_prev, seed, i, bad, history=None):
            impl(x, model_out, t, table, None, seed, offset, pred, var, clip, clip_range, w, x, bad)
        return reverse_step_

    eta, final_alpha_bar = spec.eta, spec.final_alpha_bar

    def ddim_step_(x, model_out, t, t_prev, seed, i, bad, history=None):
        impl(x, model_out, t, t_prev, table, None, seed, offset, eta, pred, clip, clip_range, final_alpha_bar, w,
             x, bad)
    return ddim_step_


def _general_step_(spec: SamplerSpec) -> Callable:
    def general_step_(x, model_out, t, t_prev, seed, i, bad, history=None):
        if bad is not None:
            record_nonfinite(model_out, t, bad)
        x.copy_(spec.step(x, model_out, t, t_prev, seed, i, history))
    return general_step_
