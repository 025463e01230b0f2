"""The eager sampler behind ``ddpm_fast.sample`` (no compile, no CUDA graph): the loop of
samplers/loop.py over each chunk of the batch."""
from __future__ import annotations

from typing import Callable, Optional

from ..ops.validate import as_seed
from .adapters import make_caller, model_input_dtype
from .chunks import check_x_T, chunk_ranges, join_chunks, start_noise, sub_spec
from .guidance_kwargs import chunk_kwargs
from .loop import SamplerSpec, run_eager

__all__ = ["sample_eager"]


def sample_eager(spec: SamplerSpec, model: Callable, model_kwargs: Optional[dict], seed: int,
                 x_T, chunk_size: Optional[int], progress: bool, every: int,
                 uncond_kwargs: Optional[dict] = None):
    """Sample ``spec.shape`` in chunks of ``chunk_size``; each chunk counts its noise from its
    global offset. Returns x_0, or (x_0, intermediates) when ``every`` > 0."""
    B = spec.shape[0]
    ranges = chunk_ranges(B, chunk_size)
    dtype = model_input_dtype(model, spec.dtype)
    seed_t = as_seed(seed, spec.device)
    if x_T is not None:
        check_x_T(x_T, spec.shape)
    outs, inters = [], []
    for start, n in ranges:
        sub = spec if n == B else sub_spec(spec, start, n)
        kw = chunk_kwargs(model_kwargs, uncond_kwargs, spec.guidance, start, n, B)
        call = make_caller(model, kw, dtype, spec.guided, spec.model_dtype)
        x = start_noise(sub, seed_t, None if x_T is None else x_T[start:start + n])
        x, inter = run_eager(sub, call, x, seed_t, progress, every)
        outs.append(x)
        inters.append(inter)
    return join_chunks(outs, inters, every)
