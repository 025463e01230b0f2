"""``sample()``'s classifier-free guidance arguments (samplers/guidance.py has the math):
checked before any model call, and turned into the kwargs of the 2B batch per chunk."""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch

from .arguments import check_model_kwargs
from .chunks import Shared, slice_kwargs
from .guidance import Guidance

__all__ = ["check_guidance", "chunk_kwargs"]


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_guidance(guidance_scale: Any, guidance_rescale: Any, model_kwargs: Optional[dict],
                   uncond_kwargs: Any, batch: int) -> Optional[Guidance]:
    """The Guidance of ``sample()``'s arguments (None without guidance_scale), every rule checked
    before any model call: typed errors naming the argument."""
    if guidance_scale is None:
        if uncond_kwargs is not None:
            raise ValueError("uncond_kwargs is only used with classifier-free guidance: pass "
                             "guidance_scale= too (1 = the conditional model alone)")
        if guidance_rescale not in (None, 0, 0.0):
            raise ValueError("guidance_rescale needs guidance_scale= (classifier-free guidance)")
        return None
    w = _real("guidance_scale", guidance_scale)
    if not math.isfinite(w):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    r = 0.0 if guidance_rescale is None else _real("guidance_rescale", guidance_rescale)
    if not 0.0 <= r <= 1.0:   # also refuses NaN
        raise ValueError(f"guidance_rescale must be a number in [0, 1], got {guidance_rescale!r}")
    if uncond_kwargs is None:
        raise ValueError("guidance_scale needs uncond_kwargs: the model's unconditional inputs, e.g. "
                         "model_kwargs={'y': labels}, uncond_kwargs={'y': null_labels}")
    uncond_kwargs = check_model_kwargs(uncond_kwargs)
    cond = model_kwargs or {}
    if not cond and not uncond_kwargs:
        raise ValueError("classifier-free guidance needs a conditional model: model_kwargs and "
                         "uncond_kwargs are both empty, so both halves of the batch would be the same")
    if set(cond) != set(uncond_kwargs):
        raise ValueError(f"model_kwargs and uncond_kwargs must have the same keys, got "
                         f"{sorted(cond)} and {sorted(uncond_kwargs)}")
    shared = tuple(sorted(k for k in cond if _check_pair(k, cond[k], uncond_kwargs[k], batch)))
    return Guidance(w, r, shared)


def _check_pair(key: str, c: Any, u: Any, batch: int) -> bool:
    """Check one kwarg's conditional and unconditional values; True if it is passed whole."""
    if isinstance(c, Shared) or isinstance(u, Shared):
        cv = c.value if isinstance(c, Shared) else c
        uv = u.value if isinstance(u, Shared) else u
        if not (isinstance(c, Shared) and isinstance(u, Shared) and _same(cv, uv)):
            raise ValueError(f"kwarg {key!r}: a Shared value is passed whole to the 2B batch, so it "
                             "must be Shared and equal in model_kwargs and uncond_kwargs")
        return True
    if isinstance(c, torch.Tensor) or isinstance(u, torch.Tensor):
        for name, v in (("model_kwargs", c), ("uncond_kwargs", u)):
            if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != batch:
                got = (f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor)
                       else type(v).__name__)
                raise ValueError(f"{name}[{key!r}] must be a per-sample tensor with {batch} rows "
                                 f"(the batch size) to be concatenated into the 2B batch, got {got} "
                                 "(wrap a tensor shared by all samples in ddpm_fast.Shared in both)")
        if c.shape[1:] != u.shape[1:] or c.dtype != u.dtype or c.device != u.device:
            raise ValueError(f"model_kwargs[{key!r}] and uncond_kwargs[{key!r}] must match in shape, "
                             f"dtype and device, got {c.dtype} {tuple(c.shape)} on {c.device} and "
                             f"{u.dtype} {tuple(u.shape)} on {u.device}")
        return False
    if not _same(c, u):
        raise ValueError(f"kwarg {key!r} is not a tensor, so the 2B batch gets one value: it must be "
                         f"equal in model_kwargs and uncond_kwargs, got {c!r} and {u!r}")
    return True


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a.cpu(), b.cpu())))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 — an object without a usable == is not "equal"
        return False


def chunk_kwargs(model_kwargs: Optional[dict], uncond_kwargs: Optional[dict],
                 guidance: Optional[Guidance], start: int, n: int, batch: int) -> Optional[dict]:
    """The model kwargs of the chunk ``start:start + n``; with guidance the 2B-batch kwargs:
    per-sample tensors as ``cat([cond rows, uncond rows])``, the rest passed whole."""
    cond = slice_kwargs(model_kwargs, start, n, batch)
    if guidance is None:
        return cond
    uncond = slice_kwargs(uncond_kwargs, start, n, batch)
    return {k: (v if k in guidance.shared else torch.cat([v, uncond[k]]))
            for k, v in (cond or {}).items()}
