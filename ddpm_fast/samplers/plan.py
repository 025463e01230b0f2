"""Which timesteps a sampler visits: the full DDPM chain or a respaced DDIM one."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schedule import spaced_timesteps


@dataclass(frozen=True)
class Plan:
    """timesteps[i] is visited at step i; prev[i] is where that step lands (-1 = the end)."""
    timesteps: tuple[int, ...]
    prev: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.timesteps)

    def device_tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Both lists as int64 device tensors: the loop indexes them on the device, no sync."""
        ts = torch.tensor(self.timesteps, dtype=torch.int64, device=device)
        ps = torch.tensor(self.prev, dtype=torch.int64, device=device)
        return ts, ps


PREV_RULES = ("next", "ratio")


def ddpm_plan(T: int) -> Plan:
    ts = tuple(range(T - 1, -1, -1))
    return Plan(ts, tuple(t - 1 for t in ts))


def ddim_plan(T: int, steps: int, spacing: str = "leading", steps_offset: int = 0,
              prev_rule: str = "next") -> Plan:
    """``steps`` spaced timesteps; each step lands on the next visited timestep ("next", our
    rule) or on t - T // steps ("ratio", diffusers' DDIMScheduler.step — which is not the next
    visited timestep for trailing/linspace spacing or steps not dividing T; PITFALLS.md,
    "Scheduler math"). A landing below 0 means the final ᾱ."""
    ts = tuple(spaced_timesteps(T, steps, spacing, steps_offset))
    if prev_rule == "ratio":
        return Plan(ts, tuple(max(t - T // steps, -1) for t in ts))
    return custom_plan(T, ts)


def custom_plan(T: int, timesteps) -> Plan:
    """The user's own strictly decreasing timesteps in [0, T); each step lands on the next one
    (diffusers' DDPMScheduler rule for respaced and custom timesteps)."""
    try:
        ts = tuple(int(t) for t in timesteps)
    except (TypeError, ValueError):
        raise TypeError(f"timesteps must be a sequence of ints, got {timesteps!r}") from None
    if not ts or any(b >= a for a, b in zip(ts, ts[1:])) or ts[0] >= T or ts[-1] < 0:
        raise ValueError(f"timesteps must be strictly decreasing ints in [0, {T}), got {list(ts)}")
    return Plan(ts, ts[1:] + (-1,))
