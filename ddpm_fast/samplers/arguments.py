"""Checks of ``ddpm_fast.sample``'s arguments: each bad value is a typed error naming the
argument and what to pass, raised before any model call (nothing is coerced silently)."""
from __future__ import annotations

import math
import numbers
import operator
import warnings
from typing import Any, Optional

import torch

from ..ops import BACKENDS, get_backend
from ..schedule import Col, NoiseSchedule

__all__ = ["check_shape", "check_device", "check_dtype", "check_model_dtype", "check_eta", "check_model_kwargs",
           "check_schedule_table", "resolve_backend"]

SAMPLE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_shape(shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of ints: a tuple/list of ints (anything with ``__index__``, so
    numpy ints too, but not bool) or a torch.Size. Floats and strings are refused, not cut."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"shape must be a tuple of ints (B, C, H, W) or a torch.Size, got {shape!r}")
    dims = []
    for s in shape:
        if isinstance(s, bool):
            raise TypeError(f"shape must hold ints, got {shape!r}")
        try:
            dims.append(operator.index(s))
        except TypeError:
            raise TypeError(f"shape must hold ints, got {type(s).__name__} {s!r} in {shape!r} "
                            "(sizes are not rounded: pass ints)") from None
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise ValueError(f"shape must be (B, ...) with at least 2 positive sizes, got {tuple(dims)}")
    return tuple(dims)


def check_device(device: torch.device, model_device: Optional[torch.device]) -> None:
    """Sampling writes and reads real memory: a meta (shape-only) device cannot sample."""
    if device.type == "meta":
        whose = "device='meta'" if model_device is None or model_device.type != "meta" \
            else "the model is on the meta device (no weights loaded), so device defaults to 'meta'"
        raise ValueError(f"cannot sample on the meta device: {whose}; load the model's weights "
                         "(e.g. model.to_empty(device=...) then load_state_dict) and pass "
                         "device='cpu' or 'cuda'")


def check_dtype(dtype: Any) -> torch.dtype:
    """The sampler state's dtype: a torch floating dtype object."""
    if isinstance(dtype, str):
        raise TypeError(f"dtype must be a torch dtype, got the string {dtype!r}: pass "
                        f"torch.{dtype.replace('torch.', '')}")
    if dtype not in SAMPLE_DTYPES:
        raise TypeError(f"dtype must be one of torch.float32, torch.float64, torch.float16, "
                        f"torch.bfloat16, got {dtype!r}")
    return dtype


# what sample(model_dtype=) can run the model in: autocast's lower-precision dtypes; float32 = off
MODEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check_model_dtype(model_dtype: Any, device: torch.device) -> Optional[torch.dtype]:
    """``sample(model_dtype=)``: the dtype ``torch.autocast`` runs the model in, or None (off).
    None and torch.float32 mean no autocast (the model computes in its weights' dtype); bfloat16
    and float16 need ``device``'s autocast to support them (checked by entering it once)."""
    if model_dtype is None or model_dtype == torch.float32:
        return None
    if isinstance(model_dtype, str):
        name = model_dtype.replace("torch.", "")
        name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(name, name)
        raise TypeError(f"model_dtype must be a torch dtype, got the string {model_dtype!r}: pass "
                        f"torch.{name}")
    if not isinstance(model_dtype, torch.dtype) or not model_dtype.is_floating_point:
        raise TypeError(f"model_dtype must be torch.bfloat16 or torch.float16 (autocast of the model "
                        f"forward; None or torch.float32: off), got {model_dtype!r}")
    if model_dtype not in MODEL_DTYPES:
        raise ValueError(f"model_dtype={model_dtype} is not an autocast precision: model_dtype runs the "
                         "model in a lower precision (torch.bfloat16 or torch.float16). For a float64 "
                         "model, cast it (model.double()) and pass dtype=torch.float64")
    if not _autocast_supports(device.type, model_dtype):
        raise ValueError(f"model_dtype={model_dtype}: torch.autocast on {device.type!r} does not "
                         f"support {model_dtype} here (torch {torch.__version__}); use "
                         f"{'torch.float16' if model_dtype == torch.bfloat16 else 'torch.bfloat16'} "
                         "or model_dtype=None")
    return model_dtype


def _autocast_supports(device_type: str, dtype: torch.dtype) -> bool:
    """True when ``torch.autocast(device_type, dtype)`` really turns on (an unsupported pair
    only warns and runs in full precision, or raises, depending on the device)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
                return (torch.is_autocast_enabled(device_type)
                        and torch.get_autocast_dtype(device_type) == dtype)
    except (RuntimeError, ValueError, AssertionError):
        return False


def check_eta(eta: Any) -> float:
    """DDIM's eta: a finite real number >= 0 (0: deterministic DDIM, 1: DDPM-like noise)."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a float >= 0, got {type(eta).__name__} {eta!r}")
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite float >= 0, got {eta}")
    return eta


def check_model_kwargs(model_kwargs: Any) -> Optional[dict]:
    """Extra keyword arguments for every model call: a dict with str keys (or None)."""
    if model_kwargs is None:
        return None
    if not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of keyword arguments for the model, e.g. "
                        f"{{'y': labels}}, got {type(model_kwargs).__name__} {model_kwargs!r}")
    bad = [k for k in model_kwargs if not isinstance(k, str)]
    if bad:
        raise TypeError(f"model_kwargs' keys must be argument names (str), got {bad!r}")
    return model_kwargs


def check_schedule_table(schedule: NoiseSchedule) -> None:
    """Every coefficient the sampler reads must be finite. The one exception is a zero
    terminal SNR (alpha_bar = 0 at the last timestep only), where 1/sqrt(alpha_bar) is inf by
    design and the samplers use the v-prediction form (checked by sample()); alpha_bar = 0
    before the last timestep, or 1 - alpha_bar = 0 (a beta below float64 resolution), makes a
    coefficient inf/NaN and every sample NaN, so it is the schedule's fault, said here."""
    table = schedule.table("cpu")
    ab = table[:, Col.ALPHA_BAR]
    allowed_inf = torch.zeros_like(table, dtype=torch.bool)
    if bool(ab[-1] == 0):
        for col in (Col.SQRT_RECIP_ALPHA_BAR, Col.SQRT_RECIPM1_ALPHA_BAR):
            allowed_inf[-1, col] = True
    bad = ~torch.isfinite(table) & ~allowed_inf
    if bool(bad.any()):
        rows = bad.any(1).nonzero().flatten().tolist()
        cols = sorted({Col(int(c)).name for c in bad.any(0).nonzero().flatten().tolist() if c < len(Col)})
        raise ValueError(
            f"the schedule {schedule!r} has non-finite coefficients ({', '.join(cols)}) at timesteps "
            f"{rows[:8]}{' ...' if len(rows) > 8 else ''}: alpha_bar reaches 0 before the last "
            "timestep (a beta of 1) or 1 - alpha_bar rounds to 0 (a beta below float64 "
            "resolution, ~1e-16); beta = 1 is allowed at the last timestep only")


def resolve_backend(backend: Optional[str]) -> str:
    """The backend for the sampler's fused step: None follows the process default
    (``ddpm_fast.set_backend`` / ``use_backend`` / env ``DDPM_FAST_BACKEND``)."""
    if backend is None:
        return get_backend()
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be None (the process default), 'auto' or one of "
                         f"{BACKENDS}, got {backend!r}")
    return backend
