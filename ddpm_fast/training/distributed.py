"""Multi-process helpers: torchrun environment, DDP set-up, sharded sampling.

Launch with ``torchrun --nproc_per_node N -m ddpm_fast train ...`` (NCCL on GPUs, gloo on CPUs).
Every rank computes its slice of the global batch (data positions, timesteps and q_sample noise
are counted by the global sample index), so N processes with batch B train on exactly the
examples and noise of one process with batch N * B.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup_distributed", "sample_sharded", "shard_range"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _destroy_at_exit() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def setup_distributed(device: Optional[str]) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT),
    or run alone. Returns the rank info and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() and world > 1 else (
            "cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if world > 1 and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)          # one GPU per process
    if world <= 1:
        return DistInfo(), dev
    if not dist.is_initialized():
        # One process group for the life of the process, destroyed at exit. A second train() in
        # the same process reuses it: destroying and re-creating the default group on torchrun's
        # store reuses its rendezvous keys, and under load one rank can read its peer's stale
        # address from the first group and both then wait forever in DDP's first collective.
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(_destroy_at_exit)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    return info, dev


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous slice of n items (the first n % world get one more)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def sample_sharded(model, n: int, image_shape, info: DistInfo, *, labels: Optional[torch.Tensor] = None,
                   null_class: Optional[int] = None, guidance: float = 1.0,
                   **sample_kwargs) -> Optional[torch.Tensor]:
    """Sample n images across the ranks: rank r draws its slice with ``sample_offset`` = the
    slice's first global index, so the result equals ``ddpm_fast.sample(model, (n, ...))`` in one
    process with the same seed. ``labels`` (int64 [n]) condition a model taking ``y``, guided
    with scale ``guidance`` against ``null_class`` (training/conditioning.py). Returns all n
    images (CPU, float32) on rank 0, None elsewhere."""
    from ..sampling import sample
    from .conditioning import guidance_kwargs
    start, stop = shard_range(n, info.rank, info.world_size)
    device = sample_kwargs.pop("device", None)
    out = None
    if stop > start:
        if labels is not None:
            sample_kwargs.update(guidance_kwargs(labels[start:stop].to(device), null_class, guidance))
        out = sample(model, (stop - start, *image_shape), sample_offset=start, device=device, **sample_kwargs)
    if not info.enabled:
        return out.float().cpu()
    # gather variable-sized slices: pad to the largest slice, gather, trim
    dev = device if device is not None else torch.device("cpu")
    size = shard_range(n, 0, info.world_size)
    chunk = size[1] - size[0]
    buf = torch.zeros((chunk, *image_shape), dtype=torch.float32, device=dev)
    if out is not None:
        buf[:stop - start] = out.float()
    parts = [torch.empty_like(buf) for _ in range(info.world_size)]
    dist.all_gather(parts, buf)
    if not info.is_main:
        return None
    pieces = []
    for r in range(info.world_size):
        a, b = shard_range(n, r, info.world_size)
        pieces.append(parts[r][:b - a])
    return torch.cat(pieces).cpu()
