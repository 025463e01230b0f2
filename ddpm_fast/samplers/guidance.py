"""Classifier-free guidance (Ho & Salimans 2022) in ``ddpm_fast.sample``.

Each step runs the model once on a batch of 2B: x and t duplicated, the conditional kwargs
first and the unconditional ones second (concatenated along dim 0). The step combines the two
halves of the output in the model's output space (ε, x0 or v, as diffusers' pipelines do),
with diffusers' convention ``m = m_u + w (m_c - m_u)``: w = 1 is the conditional model alone,
w = 0 the unconditional one. ``guidance_rescale`` r (Lin et al. 2023, section 3.4; diffusers'
``rescale_noise_cfg``) then mixes in m rescaled to the conditional output's per-sample standard
deviation: ``m = r m std(m_c)/std(m) + (1 - r) m``, std over all non-batch dims (unbiased, as
torch's default).

Where the combine runs: fused into the step kernel (the op's ``guidance_scale`` argument,
docs/ops_contract.md) unless a pre-step needs the combined output first — guidance_rescale (a
per-sample reduction), a learned-variance model, dynamic thresholding or DDIM with the model's
own ε — then ``combine`` below does it in plain PyTorch on the device (no host sync).
The arguments' checks and the kwargs of the 2B batch: samplers/guidance_kwargs.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["Guidance", "combine", "check_halves_differ"]


@dataclass(frozen=True)
class Guidance:
    """The guidance of one sampling run; ``shared``: kwargs passed whole (``Shared``), not paired."""
    scale: float
    rescale: float = 0.0
    shared: tuple = ()


def combine(model_out: torch.Tensor, scale: float, rescale: float = 0.0,
            dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The guided output [B, ...] from the model's [2B, ...] (cond first), in ``dtype``
    (default: model_out's): the reference form of the fused combine (docs/ops_contract.md)."""
    m = model_out if dtype is None else model_out.to(dtype)
    B = m.shape[0] // 2
    m_c, m_u = m[:B], m[B:]
    out = m_u + scale * (m_c - m_u)
    if rescale:
        dims = list(range(1, m.dim()))
        ratio = m_c.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
        out = rescale * (out * ratio) + (1 - rescale) * out
    return out


def check_halves_differ(model_out: torch.Tensor, kwargs: Optional[dict]) -> None:
    """Once per run, before the loop: where the conditional and unconditional kwargs differ
    (``kwargs``: the 2B batch's) but the two halves of the output agree exactly, the model
    ignores its kwargs and guidance would do nothing."""
    B = model_out.shape[0] // 2
    differ = any(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 2 * B
                 and not torch.equal(v[:B], v[B:]) for v in (kwargs or {}).values())
    if differ and torch.equal(model_out[:B], model_out[B:]):
        raise ValueError("classifier-free guidance: the model returned the same output for "
                         "model_kwargs and uncond_kwargs, so it ignores them; pass a conditional "
                         "model and its unconditional inputs (e.g. the null class)")
