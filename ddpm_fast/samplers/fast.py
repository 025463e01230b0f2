"""The fast sampler behind ``ddpm_fast.sample(..., compile=, cuda_graph=)`` (the eager
one is samplers/eager.py).

- ``compile=True`` (or a mode name, or a dict of ``torch.compile`` kwargs): the model and the
  step are compiled (Inductor; on CPU too). With the reference backend the step's Philox noise
  and coefficient math become generated kernels; with a fused backend the step stays one op.
- ``cuda_graph``: None = on for CUDA devices; True / "step" captures one step (model forward +
  fused step + counter advance) and replays it T times; "loop" captures all T steps as one
  graph; False = off. With ``compile`` as well, Inductor compiles without cudagraphs of its own.
- No host-device sync inside the loop: the timestep is gathered on the device from a table by
  a device step counter, the seed is a device tensor, the NaN check is recorded on the device and
  read once after the last step (the only sync of a call, skipped with check_nan=False).
- A small cache (samplers/cache.py) reuses the compiled step / captured graph on the next call
  with the same model weights' storages, shape, dtype, schedule and sampler settings.

Samples equal the eager sampler's (same ops, same counter-based noise): bit for bit with a
captured eager step, to float rounding (≤ 1e-4 over 1000 steps, tests) when Inductor compiles.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch

from . import cache
from .chunks import check_x_T, chunk_ranges, draw_seed, join_chunks, runner_spec
from .compiled import compile_kwargs, freezes_weights, weight_versions
from .graph import GRAPH_MODES, GraphSampler, LoopSampler
from .guidance_kwargs import chunk_kwargs
from .loop import SamplerSpec, nonfinite_error

__all__ = ["sample_fast", "graph_mode", "clear_cache"]

clear_cache = cache.clear_cache


def graph_mode(cuda_graph: Union[bool, str, None], device: torch.device) -> Optional[str]:
    """None (no graph), "step" or "loop" from the user's ``cuda_graph`` and the device."""
    if cuda_graph is None:
        return "step" if device.type == "cuda" else None
    if cuda_graph is False:
        return None
    mode = "step" if cuda_graph is True else cuda_graph
    if mode not in GRAPH_MODES:
        raise ValueError(f"cuda_graph must be None, True, False, 'step' or 'loop', got {cuda_graph!r}")
    if device.type != "cuda":
        raise ValueError(f"cuda_graph={cuda_graph!r} needs a CUDA device; sampling is on {device} "
                         "(use compile=True for the fast CPU path)")
    return mode


def sample_fast(spec: SamplerSpec, model: Callable, model_kwargs: Optional[dict], seed: Any,
                x_T: Optional[torch.Tensor], uncond_kwargs: Optional[dict] = None, *,
                compile: Union[bool, str, dict], mode: Optional[str],
                auto_graph: bool, chunk_size: Optional[int], progress: bool, every: int, schedule=None):
    """Sample ``spec.shape`` with the compiled and/or graph-captured loop (see module docstring).

    ``mode`` is ``graph_mode(cuda_graph, device)``; ``compile`` or ``mode`` is set (else the
    eager sampler, samplers/eager.py, runs). ``auto_graph``: the graph was not asked for
    (cuda_graph=None), so a failed capture falls back with a warning instead of raising.
    Same results as the eager sampler: x_0 in spec.dtype [B, ...], or ``(x_0, intermediates)``
    when ``every`` > 0; each chunk counts its noise from its global sample offset. Raises
    FloatingPointError after the loop if the model produced NaN/inf (spec.check_nan)."""
    B = spec.shape[0]
    ranges = chunk_ranges(B, chunk_size)
    seed = draw_seed() if seed is None else seed
    x_T_ok = _check_start(x_T, spec)
    ckw = (compile_kwargs(compile, capturing=mode is not None, device_type=spec.device.type)
           if compile else None)
    digest = cache.schedule_fingerprint(schedule) if schedule is not None else _table_digest(spec)
    mode_key = (repr(sorted(ckw.items())) if ckw else None, mode, every if mode == "loop" else 0)
    what = _what(ckw, mode)
    versions = weight_versions(model) if freezes_weights(ckw) else ()

    outs, inters, bads = [], [], []
    for start, n in ranges:
        # one runner per chunk shape: the chunk's offset goes to it on the device (the seed [2])
        sub = runner_spec(spec, n)
        kw = chunk_kwargs(model_kwargs, uncond_kwargs, spec.guidance, start, n, B)
        key = cache.make_key(model, sub, digest, cache.kwargs_layout(kw), mode_key, versions)
        runner = cache.get_or_build(model, key, lambda: _build(sub, model, kw, ckw, mode, every,
                                                               auto=auto_graph),
                                    what, announce=start == 0)
        x, inter, bad = runner.run(seed, None if x_T is None else x_T[start:start + n], kw, progress, every,
                                   offset=spec.sample_offset + start)
        outs.append(x)
        inters.append(inter)
        bads.append(bad)
    _raise_if_bad(bads, x_T_ok, spec.check_nan)
    return join_chunks(outs, inters, every)


def _build(spec, model, kwargs, ckw, mode, every, auto: bool):
    if mode is None:
        return LoopSampler(spec, model, kwargs, ckw)
    try:
        return GraphSampler(spec, model, kwargs, ckw, mode, every)
    except Exception as e:  # noqa: BLE001 — default-on graphs fall back; an explicit request raises
        if not auto:
            raise
        import warnings
        warnings.warn(f"ddpm_fast: capturing the sampler as a CUDA graph failed ({type(e).__name__}: "
                      f"{e}); sampling without a graph. Pass cuda_graph=False to skip the attempt.",
                      RuntimeWarning, stacklevel=4)
        torch.cuda.synchronize(spec.device)
        return LoopSampler(spec, model, kwargs, ckw)


def _what(ckw, mode) -> str:
    if mode and ckw is not None:
        return "compiling and capturing"
    return "capturing" if mode else "compiling"


def _check_start(x_T, spec: SamplerSpec) -> Optional[torch.Tensor]:
    """Check x_T. A host x_T is checked here (reading it does not wait for the device); one on
    an accelerator is checked there, and the flag, moved to the sampler's device (x_T may live
    on another one), is read with the NaN record after the loop. Returns that device flag."""
    if x_T is None:
        return None
    on_host = not isinstance(x_T, torch.Tensor) or x_T.device.type == "cpu"
    check_x_T(x_T, spec.shape, finite=on_host)
    return None if on_host else torch.isfinite(x_T).all().to(spec.device, non_blocking=True)


def _raise_if_bad(bads: list, x_T_ok: Optional[torch.Tensor], check_nan: bool) -> None:
    """The one host read of the call: the first non-finite timestep of every chunk (and x_T's
    finiteness), fetched together after the last step."""
    if not check_nan and x_T_ok is None:
        return
    flags = torch.cat([b.reshape(1) for b in bads] + ([] if x_T_ok is None else [x_T_ok.reshape(1).long()]))
    vals = flags.tolist()
    if x_T_ok is not None:
        if not vals.pop():
            raise ValueError("x_T contains NaN or inf")
    if check_nan:
        bad = [t for t in vals if t >= 0]
        if bad:
            raise nonfinite_error(max(bad))


def _table_digest(spec: SamplerSpec) -> Any:
    """Without the schedule object: hash the table when it is on the CPU, else its storage."""
    if spec.table.device.type == "cpu":
        import hashlib
        return hashlib.blake2b(spec.table.contiguous().numpy().tobytes(), digest_size=16).hexdigest()
    return ("table", spec.table.data_ptr())
