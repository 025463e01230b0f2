"""Which examples a training step sees, as a pure function of (seed, step).

The data is read as an endless sequence of epochs, each a seeded permutation of the N examples;
global step s takes positions [s * G, (s + 1) * G) of that sequence (G = global batch size), and
rank r takes its slice [r * B, (r + 1) * B) of them. Resuming at step s therefore needs no
replay of the loader, and a 2-process run sees exactly the batches of a 1-process run with 2B.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["batch_indices", "epoch_permutation", "mix_seed"]

_MASK64 = (1 << 64) - 1


def mix_seed(*words: int) -> int:
    """A 63-bit seed from a tuple of ints (splitmix64 finaliser chained over the words)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = (h ^ (int(w) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


@functools.lru_cache(maxsize=4)
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n examples in ``epoch`` (int64 [n], CPU)."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 0xDA7A))
    return torch.randperm(n, generator=g)


def batch_indices(step: int, n: int, batch_size: int, seed: int, *, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """Example indices (int64 [batch_size], CPU) of ``rank`` at global ``step``."""
    if n <= 0 or batch_size <= 0 or step < 0 or not 0 <= rank < world_size:
        raise ValueError(f"bad arguments: step={step}, n={n}, batch_size={batch_size}, "
                         f"rank={rank}, world_size={world_size}")
    start = step * batch_size * world_size + rank * batch_size
    pos = torch.arange(start, start + batch_size, dtype=torch.int64)
    epochs = pos // n
    out = torch.empty_like(pos)
    for e in torch.unique(epochs).tolist():
        sel = epochs == e
        out[sel] = epoch_permutation(n, seed, e)[pos[sel] - e * n]
    return out
