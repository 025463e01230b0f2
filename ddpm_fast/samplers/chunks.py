"""What every sampling path shares: the seed, the user's x_T, and splitting a batch into chunks.

A chunk of ``n`` samples starting at ``start`` is sampled exactly as those samples would be in
one batch: its noise counts from ``sample_offset + start`` (counter-based noise), and its
model kwargs are the per-sample rows ``start:start + n`` (see ``slice_kwargs`` for which
kwargs are per-sample). The eager sampler puts that offset in the chunk's spec (``sub_spec``);
the fast sampler builds one runner per chunk *shape* (``runner_spec``, no offset) and hands
each chunk's offset to it on the device, in the seed tensor (key, offset).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from .loop import SamplerSpec

__all__ = ["Shared", "chunk_ranges", "join_chunks", "slice_kwargs", "unwrap_kwargs", "sub_spec", "runner_spec",
           "check_x_T", "start_noise", "draw_seed"]


class Shared:
    """Marks a model kwarg as shared by every sample: chunking passes it whole to every chunk.

    Per-sample kwargs are tensors whose first dimension is the batch size B (class labels,
    text embeddings): each chunk gets its rows. A tensor that happens to have B rows but
    belongs to all samples (a lookup table) must be wrapped, ``model_kwargs={"table":
    ddpm_fast.Shared(table)}``, or chunking would hand each chunk a slice of it. The model
    always receives the tensor itself, never the wrapper."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"Shared({self.value!r})"


def _per_sample(v: Any, B: int) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == B


def chunk_ranges(B: int, chunk_size: Optional[int]) -> list[tuple[int, int]]:
    """(start, n) of each chunk of at most ``chunk_size`` samples (None: one chunk)."""
    if chunk_size is None:
        return [(0, B)]
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be an int > 0 or None, got {chunk_size!r}")
    return [(start, min(chunk_size, B - start)) for start in range(0, B, chunk_size)]


def join_chunks(outs: list, inters: list, every: int):
    """The chunks' results as sample() returns them: x_0, or (x_0, intermediates)."""
    x = outs[0] if len(outs) == 1 else torch.cat(outs)
    if every:
        return x, [torch.cat(parts) for parts in zip(*inters)]
    return x


def unwrap_kwargs(model_kwargs: Optional[dict]) -> Optional[dict]:
    """The kwargs as the model sees them (``Shared`` wrappers removed)."""
    if not model_kwargs:
        return model_kwargs
    return {k: (v.value if isinstance(v, Shared) else v) for k, v in model_kwargs.items()}


def slice_kwargs(model_kwargs: Optional[dict], start: int, n: int, B: int) -> Optional[dict]:
    """The kwargs of the chunk ``start:start + n``: per-sample tensors (first dimension B, not
    wrapped in ``Shared``) are sliced, everything else is passed whole. Wrappers are removed."""
    if not model_kwargs:
        return model_kwargs
    if n == B:
        return unwrap_kwargs(model_kwargs)
    return {k: (v.value if isinstance(v, Shared) else v[start:start + n] if _per_sample(v, B) else v)
            for k, v in model_kwargs.items()}


def sub_spec(spec: SamplerSpec, start: int, n: int) -> SamplerSpec:
    """The spec of one chunk: n samples whose noise counts from sample_offset + start."""
    sub = dataclasses.replace(spec, shape=(n, *spec.shape[1:]), sample_offset=spec.sample_offset + start)
    sub.impls = spec.impls
    return sub


def runner_spec(spec: SamplerSpec, n: int) -> SamplerSpec:
    """The spec a compiled / captured runner of n-sample chunks is built from: sample_offset 0,
    since every chunk (and every call's ``sample_offset``) passes its offset at run time in the
    seed buffer [2] (samplers/graph.py ``fill_seed``), so one build serves every chunk."""
    sub = dataclasses.replace(spec, shape=(n, *spec.shape[1:]), sample_offset=0)
    sub.impls = spec.impls
    return sub


def check_x_T(x_T: Any, shape: tuple, *, finite: bool = True) -> None:
    """Shape and dtype of a user's x_T; with ``finite`` also its values (a host read)."""
    if not isinstance(x_T, torch.Tensor) or tuple(x_T.shape) != shape:
        got = tuple(x_T.shape) if isinstance(x_T, torch.Tensor) else type(x_T).__name__
        raise ValueError(f"x_T must be a tensor of shape {shape}, got {got}")
    if not x_T.is_floating_point():
        raise TypeError(f"x_T must be floating point, got {x_T.dtype}")
    if finite and not torch.isfinite(x_T).all():
        raise ValueError("x_T contains NaN or inf")


def start_noise(spec: SamplerSpec, seed_t: torch.Tensor, x_T: Optional[torch.Tensor]) -> torch.Tensor:
    """x_T of one chunk as the sampler's own state buffer (contiguous, written in place by every
    step): a copy of the user's (which must not change) in the sampler's device and dtype, or the
    seeded one."""
    if x_T is None:
        return spec.initial_noise(seed_t)
    return torch.empty(spec.shape, dtype=spec.dtype, device=spec.device).copy_(x_T)


def draw_seed() -> int:
    """A seed from torch's default generator (``seed=None``): reproducible under manual_seed."""
    return int(torch.randint(0, 2 ** 62, (1,)).item())
