"""Input checks shared by every op's Python front: clear, typed errors instead of wrong answers.

Checks that need a tensor's values (timestep range) run on the host only for CPU tensors; on an
accelerator they become device-side asserts (``torch._assert_async``), so no op syncs the host.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..noise import check_sample_offset as counter_offset  # noqa: F401 — the front's sample_offset rule

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_DTYPES = (torch.int32, torch.int64)


def check_float(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")


def check_rank(name: str, x: torch.Tensor, min_rank: int) -> None:
    if x.dim() < min_rank:
        raise ValueError(f"{name} must have at least {min_rank} dims [B, ...], got shape {tuple(x.shape)}")


def check_same_shape(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but {ref_name} has {tuple(ref.shape)}")


def check_guided_shape(model_out: torch.Tensor, x_t: torch.Tensor) -> None:
    """With classifier-free guidance model_out holds both halves: [2B, ...] for x_t [B, ...]."""
    want = (2 * x_t.shape[0], *x_t.shape[1:])
    if tuple(model_out.shape) != want:
        raise ValueError(f"with guidance_scale, model_out must be [2B, ...] = {want} (conditional rows "
                         f"first, then unconditional) for x_t {tuple(x_t.shape)}, got {tuple(model_out.shape)}")


def check_same_device(**tensors: Optional[torch.Tensor]) -> None:
    devs = {k: v.device for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if len(set(devs.values())) > 1:
        desc = ", ".join(f"{k} on {d}" for k, d in devs.items())
        raise ValueError(f"all tensors must be on one device, got {desc}")


def as_timestep(t, batch: int, T: int, device: torch.device) -> torch.Tensor:
    """Validate a timestep (int or int tensor [] / [batch]) and return it as a device tensor."""
    if isinstance(t, bool):
        raise TypeError("timestep must be an int or an integer tensor, got bool")
    if isinstance(t, int):
        if not 0 <= t < T:
            raise ValueError(f"timestep {t} is out of range [0, {T})")
        return torch.tensor(t, dtype=torch.int64, device=device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"timestep must be an int or an integer tensor, got {type(t).__name__}")
    if t.dtype not in INT_DTYPES:
        raise TypeError(f"timestep tensor must be int32 or int64, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"timestep is on {t.device} but the data is on {device}")
    if t.dim() > 1 or (t.dim() == 1 and t.numel() not in (1, batch)):
        raise ValueError(f"timestep must have shape [] or [{batch}], got {tuple(t.shape)}")
    if t.dim() == 1 and t.numel() == 1 and batch != 1:
        t = t.reshape(())
    check_timestep_range(t, T)
    return t


def check_timestep_range(t: torch.Tensor, T: int) -> None:
    """Host check on CPU (an exact message); a device-side assert on accelerators (no host
    sync). Skipped while torch.compile traces: a data-dependent check cannot be traced, and the
    table lookup itself still fails on an out-of-range index (IndexError / device assert)."""
    if torch.compiler.is_compiling():
        return
    if t.device.type == "cpu":
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
            raise ValueError(f"timestep out of range [0, {T}): min {int(t.min())}, max {int(t.max())}")
    else:
        torch._assert_async(((t >= 0) & (t < T)).all(), "timestep out of range")


def as_table(schedule, device: torch.device) -> torch.Tensor:
    """A NoiseSchedule or a float64 [T, 16] table tensor -> the table on ``device``."""
    from ..schedule import TABLE_WIDTH, NoiseSchedule
    if isinstance(schedule, NoiseSchedule):
        return schedule.table(device)
    if not isinstance(schedule, torch.Tensor):
        raise TypeError(f"schedule must be a NoiseSchedule or its table tensor, got {type(schedule).__name__}")
    if schedule.dtype != torch.float64 or schedule.dim() != 2 or schedule.shape[1] != TABLE_WIDTH:
        raise ValueError(f"a schedule table is float64 [T, {TABLE_WIDTH}], got {schedule.dtype} "
                         f"{tuple(schedule.shape)}")
    if schedule.device != device:
        raise ValueError(f"schedule table is on {schedule.device} but the data is on {device}")
    return schedule


def as_seed(seed, device: torch.device) -> torch.Tensor:
    """An int (64-bit) or an int64 tensor ``[]`` / ``[1]`` (the key) -> an int64 ``[]`` tensor on
    ``device``; an int64 tensor ``[2]`` = (key, device sample offset) -> itself, ``[2]``: sample b
    then counts from sample_offset + seed[1] + b (docs/ops_contract.md, "Counter-based noise")."""
    from ..noise import seed_to_int64
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or not (seed.numel() == 1 and seed.dim() <= 1 or tuple(seed.shape) == (2,)):
            raise TypeError("a seed tensor must be int64 [] / [1] (the key) or [2] (key, sample offset), "
                            f"got {seed.dtype} {tuple(seed.shape)}")
        if seed.device != device:
            raise ValueError(f"seed is on {seed.device} but the data is on {device}")
        return seed if seed.numel() == 2 else seed.reshape(())
    return torch.tensor(seed_to_int64(seed), dtype=torch.int64, device=device)


def check_first_bad(op: str, first_bad: Optional[torch.Tensor], device: torch.device) -> None:
    """The NaN record of a step's out-variant: one int64 value ([] or [1]) on the data's device."""
    if first_bad is None:
        return
    if not isinstance(first_bad, torch.Tensor) or first_bad.dtype != torch.int64 or first_bad.numel() != 1:
        desc = (f"{first_bad.dtype} {tuple(first_bad.shape)}" if isinstance(first_bad, torch.Tensor)
                else type(first_bad).__name__)
        raise TypeError(f"{op}: first_bad must be one int64 value ([] or [1]), got {desc}")
    if first_bad.device != device:
        raise ValueError(f"{op}: first_bad is on {first_bad.device} but the data is on {device}")


def check_param(name: str, value, *, low: Optional[float] = None, high: Optional[float] = None,
                low_inclusive: bool = False, finite: bool = False) -> float:
    """A real scalar argument as a float: not NaN, above ``low`` (inclusive or not), at most
    ``high``, and finite if asked. Raises TypeError/ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    ok = not math.isnan(v) and (not finite or math.isfinite(v))
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        lo = "" if low is None else f"{'[' if low_inclusive else '('}{low:g}, "
        hi = "inf)" if high is None else f"{high:g}]"
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number in {lo or '(-inf, '}{hi}, got {value!r}")
    return v


def check_prev_timestep(t_prev: torch.Tensor, t: torch.Tensor, T: int) -> None:
    """DDIM's t_prev: below T and at most t (negative = the end). Host check on CPU, a device
    assert elsewhere (no sync); skipped while torch.compile traces, as check_timestep_range."""
    if torch.compiler.is_compiling():
        return
    if t_prev.device.type == "cpu":
        if t_prev.numel() and int(t_prev.max()) >= T:
            raise ValueError(f"t_prev out of range (< {T}): max {int(t_prev.max())}")
        if t_prev.numel() and bool((t_prev > t).any()):
            raise ValueError("t_prev must be <= t (DDIM steps towards t = 0)")
    else:
        torch._assert_async(((t_prev < T) & (t_prev <= t)).all(), "t_prev must be < T and <= t")
