"""``ddpm_fast.sample``: drop-in DDPM/DDIM sampling for an existing eps/x0/v-prediction model."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch

from .samplers.adapters import model_device
from .samplers.arguments import check_device, check_model_kwargs, check_shape
from .samplers.chunks import draw_seed
from .samplers.eager import sample_eager
from .samplers.fast import graph_mode, sample_fast
from .samplers.guidance_kwargs import check_guidance
from .samplers.settings import make_spec, resolve_model
from .schedule import NoiseSchedule

__all__ = ["sample"]


@torch.no_grad()
def sample(model: Callable, shape: Sequence[int], *,
           schedule: Union[NoiseSchedule, str, Any, None] = None,
           sampler: Optional[str] = None, steps: Optional[int] = None,
           timesteps: Optional[Sequence[int]] = None, eta: Optional[float] = None,
           seed: Optional[int] = None, prediction_type: Optional[str] = None,
           variance_type: Optional[str] = None, clip_denoised: Optional[bool] = None,
           clip_range: Optional[float] = None, use_clipped_model_output: Optional[bool] = None,
           thresholding: Optional[bool] = None, dynamic_thresholding_ratio: Optional[float] = None,
           sample_max_value: Optional[float] = None,
           model_kwargs: Optional[dict] = None, uncond_kwargs: Optional[dict] = None,
           guidance_scale: Optional[float] = None, guidance_rescale: float = 0.0,
           backend: Optional[str] = None,
           device: Union[torch.device, str, None] = None, dtype: torch.dtype = torch.float32,
           model_dtype: Optional[torch.dtype] = None,
           sample_offset: int = 0, chunk_size: Optional[int] = None,
           timestep_spacing: Optional[str] = None, steps_offset: Optional[int] = None,
           set_alpha_to_one: Optional[bool] = None,
           solver_order: Optional[int] = None, solver_type: Optional[str] = None,
           lower_order_final: Optional[bool] = None, final_sigmas_type: Optional[str] = None,
           use_karras_sigmas: Optional[bool] = None,
           x_T: Optional[torch.Tensor] = None, check_nan: bool = True, progress: bool = False,
           return_intermediates: bool = False, intermediate_every: int = 100,
           compile: bool = False, cuda_graph: Optional[bool] = None):
    """Sample ``shape = (B, C, H, W)`` (any ``(B, ...)``) from a diffusion model.

    model: any callable ``model(x, t, **model_kwargs)`` with x float [B, ...] and t int64 [B]
      (timesteps in [0, T), diffusers/lucidrains convention), returning a tensor of x's shape, or
      an object with ``.sample`` (diffusers ``UNet2DModel``). Class-conditional models get their
      labels through ``model_kwargs`` (e.g. ``{"y": labels}`` or ``{"class_labels": labels}``).
      A lucidrains ``GaussianDiffusion`` is accepted too: its network, schedule, objective,
      ``sampling_timesteps``, ``ddim_sampling_eta`` and clipping are used and its own sampler
      reproduced; the result stays in [-1, 1] (its ``sample()`` maps to [0, 1]: ``(x + 1) / 2``).
      x is given in the dtype of an ``nn.Module``'s parameters, to any other callable in ``dtype``.
    shape: a tuple of ints or a torch.Size (floats and strings are refused, not rounded).
    schedule: a NoiseSchedule, a schedule name ("linear", "cosine", ...; T = 1000), or a diffusers
      ``DDPMScheduler``/``DDIMScheduler``/``DPMSolverMultistepScheduler``/
      ``UniPCMultistepScheduler`` (or its config dict): then that scheduler's own loop is
      reproduced from its config, every field honoured or refused by name (docs/dropin.md).
      Default: linear, T = 1000.
    Sampler settings (each None = the diffusers scheduler's config if one is given, else
    ddpm_fast's default; an explicit value always wins — docs/dropin.md has the table):
    sampler: "ddpm" (ancestral; default, or the scheduler's class), "ddim" (``eta``), or the
      few-step multistep solvers "dpmsolver++" (DPM-Solver++, diffusers'
      ``DPMSolverMultistepScheduler``) and "unipc" (``UniPCMultistepScheduler``), 20 steps by
      default, diffusers' linspace spacing.
    solver_order, solver_type, lower_order_final, final_sigmas_type, use_karras_sigmas: the
      multistep solvers' settings, as diffusers names them: order 1-3 (default 2); "midpoint" |
      "heun" (dpmsolver++, default midpoint) or "bh1" | "bh2" (unipc, default bh2); a lower
      order on the last steps of a run under 15 steps (default True); the last sigma "zero"
      (default) or "sigma_min"; Karras sigmas (default False).
    steps: respaced steps (DDPM: as ``DDPMScheduler.set_timesteps(steps)``; DDIM default T),
      spaced by ``timestep_spacing`` ("leading" | "trailing" | "linspace") + ``steps_offset``.
    timesteps: the visited timesteps themselves (strictly decreasing), for either sampler.
    eta: DDIM noise weight (default 0).
    prediction_type: "epsilon" | "sample" | "v_prediction" (None: the schedule's hint, else
      epsilon; a conflicting explicit choice is an error).
    variance_type: "fixed_small" (β̃_t, default) or "fixed_large" (β_t), or their "_log" forms;
      "learned_range" / "learned" for a model with 2C output channels (``UNet(learn_sigma=True)``).
    clip_denoised, clip_range: clip the predicted x0 to [-clip_range, clip_range] (default on, 1).
    use_clipped_model_output: DDIM re-derives ε from the clipped x0 (default True with our own
      schedules; False for a diffusers scheduler, as its ``step`` does by default).
    thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen's dynamic thresholding
      of x0 instead of clipping (default off; 0.995, 1.0).
    set_alpha_to_one: DDIM's final ᾱ is 1 (default) or ᾱ_0.
    seed: 64-bit int keying the counter-based noise; sample i depends only on (seed,
      sample_offset + i): the same images for any batch size, chunking or backend. None draws a
      seed from torch's default generator.
    backend: the fused step's backend, "auto" | "reference" | "cpp" | "cuda" | "triton"; None
      (default) follows the process default (``set_backend``, ``use_backend``, env
      ``DDPM_FAST_BACKEND``; "auto" unless changed).
    model_kwargs: a dict passed to every model call. Per-sample values are the tensors whose
      first dimension is B (labels, embeddings): a chunk gets its rows. Wrap a tensor shared by
      all samples that happens to have B rows in ``ddpm_fast.Shared(...)``, so chunks get it whole.
    guidance_scale, uncond_kwargs: classifier-free guidance (Ho & Salimans 2022). Each step runs
      the model once on 2B inputs (x and t duplicated, ``model_kwargs`` rows first, then
      ``uncond_kwargs`` rows, e.g. ``{"y": null_labels}``; same keys, per-sample tensors of B
      rows) and the step combines the halves of its output in the model's output space:
      m = m_u + guidance_scale (m_c - m_u) (diffusers' convention: 1 = conditional alone, 0 =
      unconditional), fused into the step kernel (docs/ops_contract.md).
    guidance_rescale: Lin et al. 2023's rescale of the guided output to the conditional
      output's per-sample std, mixed in by this factor in [0, 1] (diffusers' ``rescale_noise_cfg``).
    model_dtype: run the model forward under ``torch.autocast(device.type, model_dtype)``:
      torch.bfloat16 (or torch.float16 where the device's autocast has it); None or
      torch.float32 (default): off, the model computes in its weights' dtype. Only the forward
      is lowered: x_t, the noise and every step's arithmetic stay in ``dtype`` (float32), and
      the model's bfloat16 output goes to the fused step as it is (the step ops read model_out
      in any float dtype, docs/ops_contract.md). Autocast rather than casting the weights:
      the user's model is left untouched (no bfloat16 copy held or made per call), it works for
      any callable (a diffusers ``UNet2DModel``, a lucidrains ``Unet``), and autocast keeps the
      precision-sensitive ops (softmax, norms' statistics, the time embedding's sin/cos) in
      float32. On the 2-core AMD EPYC dev machine (AVX-512 BF16) the demo UNet's forward was
      about as fast under autocast as with cast weights, both faster than float32 (README,
      "bf16"). Where the device's autocast lacks the dtype, a ValueError says so.
    x_T: start from this noise instead of the seeded one (float [B, ...]).
    check_nan: raise FloatingPointError if the model ever outputs NaN/inf (checked on the
      device, reported once after the loop: no per-step host sync).
    compile: torch.compile the model and the step (True, a mode name, or a dict of
      torch.compile kwargs); on CPU too. Compiled once per (model weights, shape, dtype,
      schedule, sampler settings) and cached (ddpm_fast/samplers/fast.py).
      ``{"options": {"freezing": True}}`` compiles the weights in as constants (a few % faster
      on CPU; an in-place weight update then recompiles: docs/fast_sampler.md).
    cuda_graph: None = on for CUDA devices; True / "step" replays one captured step T times,
      "loop" captures the whole loop as one graph, False = off. Needs a CUDA device.
    Returns x_0 as float32 [B, ...] (dtype ``dtype``), or ``(x_0, intermediates)`` with
      ``return_intermediates`` (x_t every ``intermediate_every`` steps).
    """
    if return_intermediates and not (isinstance(intermediate_every, int) and intermediate_every > 0):
        raise ValueError(f"intermediate_every must be an int > 0, got {intermediate_every!r}")
    explicit = dict(sampler=sampler, steps=steps, timesteps=timesteps, eta=eta,
                    prediction_type=prediction_type, variance_type=variance_type,
                    clip_denoised=clip_denoised, clip_range=clip_range,
                    use_clipped_model_output=use_clipped_model_output, thresholding=thresholding,
                    dynamic_thresholding_ratio=dynamic_thresholding_ratio,
                    sample_max_value=sample_max_value, timestep_spacing=timestep_spacing,
                    steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one,
                    solver_order=solver_order, solver_type=solver_type,
                    lower_order_final=lower_order_final, final_sigmas_type=final_sigmas_type,
                    use_karras_sigmas=use_karras_sigmas)
    model, schedule, settings = resolve_model(model, schedule, explicit)
    shape = check_shape(shape)
    model_kwargs = check_model_kwargs(model_kwargs)
    guidance = check_guidance(guidance_scale, guidance_rescale, model_kwargs, uncond_kwargs, shape[0])
    home = model_device(model)
    device = torch.device(device) if device is not None else (home or torch.device("cpu"))
    check_device(device, home)
    spec = make_spec(schedule, settings, shape, device, dtype, sample_offset, backend, check_nan, guidance,
                     model_dtype)
    every = intermediate_every if return_intermediates else 0
    mode = graph_mode(cuda_graph, device)
    if compile or mode is not None:
        return sample_fast(spec, model, model_kwargs, seed, x_T, uncond_kwargs, compile=compile, mode=mode,
                           auto_graph=cuda_graph is None, chunk_size=chunk_size, progress=progress,
                           every=every, schedule=schedule)
    return sample_eager(spec, model, model_kwargs, draw_seed() if seed is None else seed, x_T,
                        chunk_size, progress, every, uncond_kwargs)
