"""Wall-clock timing shared by the benchmarks: one call in milliseconds with the device
synchronised on both sides, and medians of interleaved rounds (alternating the contenders so
that a change in machine load hits each of them alike)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def once_ms(fn: Callable, device: torch.device, before: Optional[Callable] = None) -> float:
    """One call of ``fn`` in ms; ``before`` runs first, untimed (e.g. restoring state fn mutates)."""
    if before is not None:
        before()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def interleaved_ms(fns: list, device: torch.device, rounds: int, before: Optional[Callable] = None,
                   warmup: bool = True) -> list:
    """Median ms of each function over ``rounds`` rounds that call every function once in turn;
    ``warmup``: one untimed call of each first."""
    if warmup:
        for f in fns:
            if before is not None:
                before()
            f()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for ts, f in zip(times, fns):
            ts.append(once_ms(f, device, before))
    return [statistics.median(ts) for ts in times]
