"""Class labels for class-conditional training and sampling with classifier-free guidance
(Ho & Salimans 2022): one network learns p(x | y) and, through a reserved null class, p(x).

- :func:`class_count`: K from a data set's labels (the UNet gets ``num_classes=K``; label K is
  the null class, :attr:`ddpm_fast.UNet.null_class`).
- :func:`drop_labels`: during training each label becomes the null class with probability
  ``p``, decided by a uniform drawn from the counter-based Philox stream keyed by the step's seed
  and the sample's global index, so a resumed or multi-process run drops exactly the labels of
  an uninterrupted single-process run (ddpm_fast/training/trainer.py, "the step's randomness").
- :func:`class_rows`: the labels of a grid with one row per class.
- :func:`guidance_kwargs`: the ``sample()`` arguments for labels and a guidance scale.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import ops

__all__ = ["class_count", "drop_labels", "class_rows", "guidance_kwargs"]


def class_count(labels: Optional[torch.Tensor], data_name: str) -> int:
    """K = max label + 1 for integer labels [N] in [0, K); a clear error without labels."""
    if labels is None:
        raise ValueError(f"conditional training needs class labels, and the data {data_name!r} has "
                         "none: use the digits, an image folder with one sub-folder per class, or "
                         "MNIST IDX images with their labels file (train-labels-idx1-ubyte)")
    if labels.numel() == 0 or int(labels.min()) < 0:
        raise ValueError(f"data {data_name!r}: class labels must be integers >= 0, got "
                         f"min {int(labels.min()) if labels.numel() else 'none'}")
    return int(labels.max()) + 1


def drop_labels(labels: torch.Tensor, p: float, null_class: int, seed: int,
                sample_offset: int = 0) -> torch.Tensor:
    """labels (int64 [B]) with each replaced by ``null_class`` where a uniform u < p.

    u for sample i is ``ops.rand`` at (seed, sample_offset + i): the same decision for a sample
    whatever the batch split. p = 0 keeps every label, p = 1 drops every one."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1], got {p!r}")
    if p == 0.0:
        return labels
    u = ops.rand((labels.shape[0],), seed, sample_offset=sample_offset, device=labels.device)
    return torch.where(u < p, torch.full_like(labels, null_class), labels)


def class_rows(num_classes: int, per_class: int, device=None) -> torch.Tensor:
    """int64 [num_classes * per_class]: ``per_class`` of class 0, then of class 1, ... (a grid
    drawn with ``nrow=per_class`` has one row per class)."""
    if num_classes < 1 or per_class < 1:
        raise ValueError(f"need num_classes >= 1 and per_class >= 1, got {num_classes}, {per_class}")
    return torch.arange(num_classes, device=device).repeat_interleave(per_class)


def guidance_kwargs(labels: torch.Tensor, null_class: int, guidance: float, rescale: float = 0.0) -> dict:
    """Keyword arguments of ``ddpm_fast.sample`` for a model taking ``y``: the labels, and for
    ``guidance != 1`` the guidance scale with the null class as the unconditional input
    (ε̂ = ε(x, ∅) + w (ε(x, y) − ε(x, ∅)); w = 1 is the conditional model alone) and, when not
    0, ``guidance_rescale`` (Lin et al. 2023)."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number, got {guidance!r}")
    kw = {"model_kwargs": {"y": labels}}
    if guidance != 1:
        kw.update(guidance_scale=float(guidance), uncond_kwargs={"y": torch.full_like(labels, null_class)})
        if rescale:
            kw["guidance_rescale"] = float(rescale)
    return kw
