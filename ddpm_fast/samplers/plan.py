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


def ddpm_plan(T: int) -> Plan:
    ts = tuple(range(T - 1, -1, -1))
    return Plan(ts, tuple(t - 1 for t in ts))


def ddim_plan(T: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> Plan:
    ts = tuple(spaced_timesteps(T, steps, spacing, steps_offset))
    # the next visited timestep, not t - T//steps (diffusers PR #2076 pitfall)
    return Plan(ts, ts[1:] + (-1,))
