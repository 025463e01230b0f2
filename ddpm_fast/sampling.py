"""``ddpm_fast.sample``: drop-in DDPM/DDIM sampling for an existing eps/x0/v-prediction model."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch

from .ops.enums import VARIANCE_TYPES
from .samplers.adapters import canonical_prediction, model_device, reject_wrapped_diffusion
from .samplers.arguments import (check_device, check_dtype, check_eta, check_model_kwargs,
                                 check_schedule_table, check_shape, resolve_backend)
from .samplers.chunks import draw_seed
from .samplers.eager import sample_eager
from .samplers.fast import graph_mode, sample_fast
from .samplers.loop import SamplerSpec
from .samplers.plan import ddim_plan, ddpm_plan
from .schedule import Col, NoiseSchedule

__all__ = ["sample"]


@torch.no_grad()
def sample(model: Callable, shape: Sequence[int], *,
           schedule: Union[NoiseSchedule, str, Any, None] = None,
           sampler: str = "ddpm", steps: Optional[int] = None, eta: float = 0.0,
           seed: Optional[int] = None, prediction_type: Optional[str] = None,
           variance_type: str = "fixed_small", clip_denoised: bool = True, clip_range: float = 1.0,
           model_kwargs: Optional[dict] = None, backend: Optional[str] = None,
           device: Union[torch.device, str, None] = None, dtype: torch.dtype = torch.float32,
           sample_offset: int = 0, chunk_size: Optional[int] = None,
           timestep_spacing: str = "leading", steps_offset: int = 0, set_alpha_to_one: bool = True,
           x_T: Optional[torch.Tensor] = None, check_nan: bool = True, progress: bool = False,
           return_intermediates: bool = False, intermediate_every: int = 100,
           compile: bool = False, cuda_graph: Optional[bool] = None):
    """Sample ``shape = (B, C, H, W)`` (any ``(B, ...)``) from a diffusion model.

    model: any callable ``model(x, t, **model_kwargs)`` with x float [B, ...] and t int64 [B]
      (timesteps in [0, T), diffusers/lucidrains convention), returning a tensor of x's shape, or
      an object with ``.sample`` (diffusers ``UNet2DModel``). Class-conditional models get their
      labels through ``model_kwargs`` (e.g. ``{"y": labels}`` or ``{"class_labels": labels}``).
      x is given in the dtype of an ``nn.Module``'s parameters, to any other callable in ``dtype``.
    shape: a tuple of ints or a torch.Size (floats and strings are refused, not rounded).
    schedule: a NoiseSchedule, a schedule name ("linear", "cosine", ...; T = 1000), or a diffusers
      scheduler (its config is read, prediction type included). Default: linear, T = 1000.
    sampler: "ddpm" (ancestral, all T steps) or "ddim" (``steps`` respaced timesteps, ``eta``).
    seed: 64-bit int keying the counter-based noise; sample i depends only on (seed,
      sample_offset + i): the same images for any batch size, chunking or backend. None draws a
      seed from torch's default generator.
    prediction_type: "epsilon" | "sample" | "v_prediction" (None: the schedule's hint, else
      epsilon; a conflicting explicit choice is an error).
    variance_type: "fixed_small" (β̃_t) or "fixed_large" (β_t); no noise is added at t = 0.
    backend: the fused step's backend, "auto" | "reference" | "cpp" | "cuda" | "triton"; None
      (default) follows the process default (``set_backend``, ``use_backend``, env
      ``DDPM_FAST_BACKEND``; "auto" unless changed).
    model_kwargs: a dict passed to every model call. Per-sample values are the tensors whose
      first dimension is B (labels, embeddings): a chunk gets its rows. Wrap a tensor shared by
      all samples that happens to have B rows in ``ddpm_fast.Shared(...)``, so chunks get it whole.
    chunk_size: sample at most this many at a time (same results as one batch).
    x_T: start from this noise instead of the seeded one (float [B, ...]).
    check_nan: raise FloatingPointError if the model ever outputs NaN/inf (checked on the
      device, reported once after the loop: no per-step host sync).
    compile: torch.compile the model and the step (True, a mode name, or a dict of
      torch.compile kwargs); on CPU too. Compiled once per (model weights, shape, dtype,
      schedule, sampler settings) and cached (ddpm_fast/samplers/fast.py).
    cuda_graph: None = on for CUDA devices; True / "step" replays one captured step T times,
      "loop" captures the whole loop as one graph, False = off. Needs a CUDA device.
    Returns x_0 as float32 [B, ...] (dtype ``dtype``), or ``(x_0, intermediates)`` with
    ``return_intermediates`` (x_t every ``intermediate_every`` steps).
    """
    reject_wrapped_diffusion(model)
    if return_intermediates and not (isinstance(intermediate_every, int) and intermediate_every > 0):
        raise ValueError(f"intermediate_every must be an int > 0, got {intermediate_every!r}")
    schedule, pred = _resolve_schedule(schedule, prediction_type)
    shape = check_shape(shape)
    model_kwargs = check_model_kwargs(model_kwargs)
    home = model_device(model)
    device = torch.device(device) if device is not None else (home or torch.device("cpu"))
    check_device(device, home)
    spec = _make_spec(schedule, pred, shape, device, dtype, sampler, steps, eta, variance_type,
                      clip_denoised, clip_range, timestep_spacing, steps_offset, set_alpha_to_one,
                      sample_offset, backend, check_nan)
    every = intermediate_every if return_intermediates else 0
    mode = graph_mode(cuda_graph, device)
    if compile or mode is not None:
        return sample_fast(spec, model, model_kwargs, seed, x_T, compile=compile, mode=mode,
                           auto_graph=cuda_graph is None, chunk_size=chunk_size, progress=progress,
                           every=every, schedule=schedule)
    return sample_eager(spec, model, model_kwargs, draw_seed() if seed is None else seed, x_T,
                        chunk_size, progress, every)


def _make_spec(schedule, pred, shape, device, dtype, sampler, steps, eta, variance_type,
               clip_denoised, clip_range, spacing, steps_offset, set_alpha_to_one, sample_offset,
               backend, check_nan) -> SamplerSpec:
    T = schedule.T
    if sampler == "ddpm":
        if steps not in (None, T):
            raise ValueError(f"the DDPM sampler visits all T={T} steps; for {steps} steps use "
                             "sampler='ddim' (eta=1 gives the respaced DDPM posterior)")
        if eta:
            raise ValueError("eta applies to sampler='ddim' only")
        plan = ddpm_plan(T)
    elif sampler == "ddim":
        plan = ddim_plan(T, T if steps is None else steps, spacing, steps_offset)
        eta = check_eta(eta)
    else:
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {sorted(VARIANCE_TYPES)}, got {variance_type!r}")
    dtype = check_dtype(dtype)
    if not isinstance(sample_offset, int) or sample_offset < 0:
        raise ValueError(f"sample_offset must be an int >= 0, got {sample_offset!r}")
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    final = 1.0 if set_alpha_to_one else float(schedule.column(Col.ALPHA_BAR)[0])
    spec = SamplerSpec(shape=shape, device=device, dtype=dtype, table=schedule.table(device), plan=plan,
                       sampler=sampler, prediction_type=pred, variance_type=variance_type,
                       clip_denoised=bool(clip_denoised), clip_range=float(clip_range), eta=float(eta),
                       final_alpha_bar=final, sample_offset=sample_offset,
                       backend=resolve_backend(backend), check_nan=check_nan)
    return spec.resolve()


def _resolve_schedule(schedule, prediction_type):
    if schedule is None:
        schedule = NoiseSchedule.linear(1000)
    elif isinstance(schedule, str):
        schedule = NoiseSchedule.make(schedule, 1000)
    elif not isinstance(schedule, NoiseSchedule):
        if hasattr(schedule, "config") and hasattr(schedule.config, "num_train_timesteps"):
            schedule = NoiseSchedule.from_diffusers(schedule)
        else:
            raise TypeError(f"schedule must be a NoiseSchedule, a name or a diffusers scheduler, "
                            f"got {type(schedule).__name__}")
    asked, hint = canonical_prediction(prediction_type), canonical_prediction(schedule.prediction_type)
    if asked and hint and asked != hint:
        raise ValueError(f"prediction_type={asked!r} conflicts with the schedule's {hint!r}")
    pred = asked or hint or "epsilon"
    check_schedule_table(schedule)
    if pred == "epsilon" and schedule.zero_terminal_snr:
        raise ValueError("a zero-terminal-SNR schedule has alpha_bar_T = 0, where x0 cannot be "
                         "recovered from epsilon (division by zero); train and sample with "
                         "prediction_type='v_prediction'")
    return schedule, pred
