"""Calling the user's model as it is: any ``model(x, t)``, a diffusers ``UNet2DModel``
(``(sample, timestep)`` returning ``.sample``), a lucidrains ``Unet(x, time)``.

No wrapper is needed from the user; we only normalise the output to a tensor and check it.
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Optional

import torch

from ..ops.enums import PREDICTION_ALIASES


def model_input_dtype(model: Any, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype the model computes in: an nn.Module's first floating parameter's; for any
    other callable (whose weights we cannot see) ``default``, the sampler's dtype."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return default


# torch's wording for a dtype clash inside a model (linear, conv, matmul, norm layers)
_DTYPE_CLASH = re.compile(r"dtype|scalar type|Input type|should be the same", re.IGNORECASE)


def autocast_context(device_type: str, model_dtype: Optional[torch.dtype]):
    """``torch.autocast(device_type, model_dtype)`` around the model call (``sample(model_dtype=)``),
    or nothing for None. The weight-cast cache is off: a captured CUDA graph must not hold casts
    made outside it (PyTorch's CUDA graph notes), and on CPU a weight is read once per forward."""
    if model_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=model_dtype, cache_enabled=False)


def call_model(model: Callable, x: torch.Tensor, t: torch.Tensor, kwargs: dict,
               guided: bool = False, model_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``model(x, t, **kwargs)`` as a tensor. A dtype clash inside the model (x in one dtype,
    its weights in another) is re-raised saying which dtype x had and how to change it.
    ``guided``: classifier-free guidance, one call on the 2B batch (x and t duplicated; kwargs
    are the 2B-batch kwargs already, samplers/guidance.py), returning [2B, ...].
    ``model_dtype``: run the model under ``torch.autocast`` to that dtype (bfloat16 / float16);
    its output is returned in whatever dtype the model produced (the steps take it as is)."""
    if guided:
        x, t = torch.cat([x, x]), torch.cat([t, t])
    try:
        with autocast_context(x.device.type, model_dtype):
            return unwrap_output(model(x, t, **kwargs))
    except TypeError as e:
        if not (guided and "keyword argument" in str(e)):
            raise
        raise TypeError(f"classifier-free guidance calls the model with the keyword arguments "
                        f"{sorted(kwargs)} (model_kwargs / uncond_kwargs), which it does not take "
                        f"({e}); guide a conditional model") from e
    except RuntimeError as e:
        if not _DTYPE_CLASH.search(str(e)):
            raise
        raise TypeError(
            f"the model failed on x of dtype {x.dtype} ({e}). sample() gives an nn.Module x in its "
            "parameters' dtype and any other callable x in sample()'s dtype=: pass "
            "dtype=<the dtype the model computes in>, or cast the model (model.float())") from e


def model_device(model: Any) -> Optional[torch.device]:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return None


def unwrap_output(out: Any) -> torch.Tensor:
    """diffusers returns an object with ``.sample``; some models return tuples or dicts."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample") and isinstance(out.sample, torch.Tensor):
        return out.sample
    if isinstance(out, dict) and isinstance(out.get("sample"), torch.Tensor):
        return out["sample"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; expected a tensor (or an object "
                    "with .sample, as diffusers models return)")


def check_output(out: torch.Tensor, x: torch.Tensor, learned_variance: bool = False,
                 guided: bool = False) -> None:
    """The model's output: x's shape, or twice its channels for a learned-variance model;
    twice the batch with classifier-free guidance (the model ran on 2B inputs)."""
    batch = 2 * x.shape[0] if guided else x.shape[0]
    want = (batch, 2 * x.shape[1], *x.shape[2:]) if learned_variance else (batch, *x.shape[1:])
    if tuple(out.shape) != want:
        hint = ""
        if not learned_variance and out.dim() == x.dim() and out.shape[1] == 2 * x.shape[1]:
            hint = (" (twice the channels: a learned-variance model; pass "
                    "variance_type='learned_range' or 'learned')")
        given = (2 * x.shape[0], *x.shape[1:]) if guided else tuple(x.shape)
        raise ValueError(f"the model returned shape {tuple(out.shape)} for input {given}{hint}")
    if not out.is_floating_point():
        raise TypeError(f"the model returned {out.dtype}; expected a floating tensor")


def make_caller(model: Callable, model_kwargs: Optional[dict], dtype: torch.dtype, guided: bool = False,
                model_dtype: Optional[torch.dtype] = None
                ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``call(x, t_batch) -> tensor`` for the user's model, casting x to its dtype (on the 2B
    batch with ``guided``, under autocast to ``model_dtype``: see ``call_model``)."""
    kwargs = dict(model_kwargs or {})

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return call_model(model, x.to(dtype), t, kwargs, guided, model_dtype)
    call.kwargs = kwargs
    return call


def canonical_prediction(name: Optional[str]) -> Optional[str]:
    if name is None:
        return None
    if name not in PREDICTION_ALIASES:
        raise ValueError(f"unknown prediction_type {name!r}; use epsilon | sample | v_prediction")
    return PREDICTION_ALIASES[name]
