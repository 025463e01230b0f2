"""Learned variance (Nichol & Dhariwal 2021; diffusers ``variance_type="learned"`` /
``"learned_range"``): the model outputs 2C channels, the mean prediction then a variance term.

The fused DDPM step adds ``σ_table[t] · noise`` and takes the noise as an optional input. With the
table's σ = √β_t (always > 0) and ``noise = z · σ_learned / √β_t``, where z is the step's own
Philox draw, the unchanged kernel on every backend adds exactly σ_learned · z (and nothing at
t = 0, where it masks the noise). The per-element σ is computed here in plain PyTorch on the
device: no host sync, inside compiled and captured loops.

- "learned_range" (improved-diffusion, diffusers): v in [-1, 1] interpolates the log variance
  between log β̃_t (the table's clipped log column) and log β_t:
  log σ² = (v+1)/2 · log β_t + (1 - (v+1)/2) · log β̃_t.
- "learned" (diffusers): v is σ² itself (negative values, where diffusers returns NaN, give 0).
"""
from __future__ import annotations

import torch

from ..noise import STREAM_STEP, philox_normal
from ..schedule import Col
from .x0_rules import coef

KINDS = ("learned", "learned_range")


def split_output(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean prediction, variance term): the first and second C channels."""
    return out[:, :channels], out[:, channels:]


def learned_sigma(kind: str, v: torch.Tensor, t: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """σ per element from the model's variance channels at t (float32)."""
    v = v.to(torch.float32)
    if kind == "learned":
        return v.clamp(min=0).sqrt()
    min_log = coef(table, t, Col.POSTERIOR_LOG_VARIANCE_CLIPPED, v.dim(), torch.float32)
    max_log = coef(table, t, Col.BETA, v.dim(), torch.float32).log()
    frac = (v + 1) / 2
    return torch.exp(0.5 * (frac * max_log + (1 - frac) * min_log))


def kernel_noise(kind: str, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, table: torch.Tensor,
                 seed: torch.Tensor, sample_offset: int) -> torch.Tensor:
    """The noise to hand the DDPM step run with variance "fixed_large" (σ_table = √β_t)."""
    z = philox_normal(seed, tuple(x.shape), t, sample_offset, STREAM_STEP, device=x.device)
    scale = learned_sigma(kind, v, t, table) / coef(table, t, Col.SIGMA_LARGE, x.dim(), torch.float32)
    return (z * scale).to(x.dtype)
