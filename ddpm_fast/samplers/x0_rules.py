"""What happens to the predicted x0 before a step, where the fused step alone cannot do it:
dynamic thresholding (Imagen; diffusers ``thresholding=True``) and DDIM's "keep the model's ε
after clipping x0" (diffusers' ``use_clipped_model_output=False``).

The fused kernels clip x0 themselves and, in DDIM, re-derive ε from the clipped x0. For the
other rules this module computes (x0, ε) in plain PyTorch — one element-wise pass plus, for
thresholding, a per-sample sort — and hands the step inputs that make the unchanged kernel
produce exactly the step on that (x0, ε):

- DDPM only needs x0: the kernel gets ``model_out = x0`` as an x0-prediction, clipping off.
- DDIM needs both: the kernel gets them as a v-prediction at the same t, i.e. the rotation
  ``x' = √ᾱ x0 + √(1-ᾱ) ε``, ``v' = √ᾱ ε - √(1-ᾱ) x0``, from which its own v formulas
  ``x0 = √ᾱ x' - √(1-ᾱ) v'``, ``ε = √ᾱ v' + √(1-ᾱ) x'`` give back (x0, ε) — orthogonal, so no
  division and no loss of precision even where ᾱ = 0 (zero terminal SNR).

The step's noise depends only on (seed, t, sample index), never on x, so the noise term is the
fused step's own. Everything here is device tensor math: no host sync, traceable by
torch.compile and capturable in a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..ops.enums import PRED_EPSILON, PRED_SAMPLE, PRED_V
from ..schedule import Col


@dataclass(frozen=True)
class X0Rule:
    """How x0 is treated before the step. ``threshold`` = (ratio, max_value) or None."""
    clip: bool
    clip_range: float
    threshold: Optional[tuple[float, float]]
    rederive_eps: bool          # DDIM: ε from the clipped x0 (True) or the model's (False)

    def needs_pre_step(self, sampler: str) -> bool:
        """False when the fused kernel does it all (the common, fastest case)."""
        if self.threshold is not None:
            return True
        return sampler == "ddim" and self.clip and not self.rederive_eps


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3), as diffusers'
    ``_threshold_sample``: per sample, s = the ``ratio`` quantile of |x0| (linear interpolation),
    clamped to [1, max_value]; x0 is clamped to [-s, s] and divided by s.

    The quantile is a sort and a gather at indices fixed by the shape: no data-dependent
    control flow, no host sync (torch.quantile checks its input on the host on some devices)."""
    B = x0.shape[0]
    flat = x0.reshape(B, -1)
    n = flat.shape[1]
    pos = ratio * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    v = flat.abs().sort(dim=1).values
    s = v[:, lo] + frac * (v[:, hi] - v[:, lo])
    s = s.clamp(min=1.0, max=max_value).reshape(B, *([1] * (x0.dim() - 1)))
    return torch.minimum(torch.maximum(x0, -s), s) / s


def coef(table: torch.Tensor, t: torch.Tensor, col: int, ndim: int, dtype) -> torch.Tensor:
    """table[t, col] shaped to broadcast over [B, ...]; a gather, no host sync."""
    c = table.index_select(0, t.reshape(-1).long())[:, col].to(dtype)
    return c.reshape(-1, *([1] * (ndim - 1))) if t.dim() > 0 else c.reshape(())


def x0_and_eps(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor, table: torch.Tensor,
               prediction_type: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, ε) from the model output at t, by prediction type (as every sampler derives them)."""
    sa = coef(table, t, Col.SQRT_ALPHA_BAR, x.dim(), x.dtype)
    s1a = coef(table, t, Col.SQRT_ONE_MINUS_ALPHA_BAR, x.dim(), x.dtype)
    if prediction_type == PRED_EPSILON:
        return (x - s1a * m) / sa, m
    if prediction_type == PRED_SAMPLE:
        return m, (x - sa * m) / s1a
    return sa * x - s1a * m, sa * m + s1a * x


def pre_step(rule: X0Rule, sampler: str, x: torch.Tensor, m: torch.Tensor, t: torch.Tensor,
             table: torch.Tensor, prediction_type: int
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(x_t, model_out, prediction type) to give the fused step, which then runs with its own
    clipping off; both tensors in x's dtype (a half-precision model output is not rounded
    again). The module docstring says why this reproduces the rule exactly."""
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc, mc = x.to(cd), m.to(cd)
    x0, eps = x0_and_eps(xc, mc, t, table, prediction_type)
    if rule.threshold is not None:       # diffusers: thresholding takes precedence over clipping
        x0 = dynamic_threshold(x0, *rule.threshold)
    elif rule.clip:
        x0 = x0.clamp(-rule.clip_range, rule.clip_range)
    if sampler == "ddpm":
        return x, x0.to(x.dtype), PRED_SAMPLE
    if rule.rederive_eps:
        _, eps = x0_and_eps(xc, x0, t, table, PRED_SAMPLE)
    sa = coef(table, t, Col.SQRT_ALPHA_BAR, x.dim(), cd)
    s1a = coef(table, t, Col.SQRT_ONE_MINUS_ALPHA_BAR, x.dim(), cd)
    return (sa * x0 + s1a * eps).to(x.dtype), (sa * eps - s1a * x0).to(x.dtype), PRED_V
