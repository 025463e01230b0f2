"""The fused DDPM ops, user-facing: validated inputs, then the backend chosen by the dispatcher.

Timestep convention everywhere: integer t in [0, T), sampling runs t = T-1 .. 0 (diffusers'
and lucidrains' convention); ``reverse_step`` at t maps x_t to x_{t-1}. Semantics of every op:
docs/ops_contract.md.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import reference as _reference  # noqa: F401 — registers the reference backend
from .dispatch import (BACKENDS, BackendUnavailableError, backends, get_backend, implementation,
                       set_backend, use_backend)
from .enums import TEMB_MODES, prediction_code, variance_code
from .validate import (as_seed, as_table, as_timestep, check_first_bad, check_float, check_guided_shape, check_param,
                       check_prev_timestep, check_rank, check_same_device, check_same_shape, counter_offset)
from .dispatch import preload as _preload

_preload()

__all__ = ["randn", "rand", "q_sample", "reverse_step", "ddim_step", "multistep_update", "temb_add", "groupnorm_temb_silu",
           "attention", "conv3x3", "sinusoidal_embedding", "backends", "set_backend", "get_backend", "use_backend",
           "implementation", "BACKENDS", "BackendUnavailableError"]

_TARGETS = {"epsilon": 0, "sample": 1, "v_prediction": 2}


def randn(shape, seed, *, timestep=0, sample_offset: int = 0, stream: int = 0,
          device=None, dtype: torch.dtype = torch.float32, backend: Optional[str] = None) -> torch.Tensor:
    """Standard normals of ``shape = (B, ...)`` from the Philox stream: element e of sample b is
    counter (e // 4, sample_offset + b, timestep, stream) (docs/ops_contract.md). The same seed
    gives the same values on every backend and for any split of the batch. stream 0 = x_T.
    ``seed``: an int, or an int64 tensor [] (the key) or [2] = (key, k), whose k is added to the
    sample index on the device (sample b counts from sample_offset + k + b)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return _philox("philox_normal", shape, seed, timestep, sample_offset, stream, device, backend).to(dtype)


def rand(shape, seed, *, timestep=0, sample_offset: int = 0, stream: int = 0,
         device=None, backend: Optional[str] = None) -> torch.Tensor:
    """Uniforms in (0, 1), float32, same counters as ``randn`` (bitwise equal on all backends)."""
    return _philox("philox_uniform", shape, seed, timestep, sample_offset, stream, device, backend)


def _philox(op, shape, seed, timestep, sample_offset, stream, device, backend):
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 0 for s in shape):
        raise ValueError(f"shape must be (B, ...) with sizes >= 0, got {shape}")
    if not isinstance(stream, int) or not 0 <= stream < 2 ** 32:
        raise ValueError(f"stream must be an int in [0, 2**32), got {stream!r}")
    device = torch.device(device) if device is not None else (
        seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu"))
    seed_t = as_seed(seed, device)
    t = as_timestep(timestep, shape[0], 2 ** 32, device)  # a Philox counter word
    numel = 1
    for s in shape[1:]:
        numel *= s
    offset = counter_offset(sample_offset, shape[0], seed_t)
    out = implementation(op, backend, device)(seed_t, t, shape[0], numel, offset, stream)
    return out.reshape(shape)


def q_sample(x0: torch.Tensor, t, schedule, noise: Optional[torch.Tensor] = None, *,
             seed=None, sample_offset: int = 0, return_target: Optional[str] = None,
             backend: Optional[str] = None):
    """Forward noising x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε (Ho et al. eq. 4).

    x0: float [B, ...]; t: int or int tensor [] / [B]; schedule: NoiseSchedule or its table.
    Give ``noise`` (same shape as x0), or ``seed`` to draw ε in the kernel (Philox stream 2,
    counted by sample_offset + b). With ``return_target`` ("epsilon" | "sample" |
    "v_prediction", seeded path only) returns ``(x_t, target)`` for the training loss.
    """
    check_float("x0", x0)
    check_rank("x0", x0, 2)
    table = as_table(schedule, x0.device)
    t = as_timestep(t, x0.shape[0], table.shape[0], x0.device)
    if noise is not None:
        if seed is not None or return_target is not None:
            raise ValueError("give either noise= or seed= (return_target needs seed=)")
        check_float("noise", noise)
        check_same_shape("noise", noise, "x0", x0)
        check_same_device(x0=x0, noise=noise)
        return implementation("q_sample", backend, x0.device)(x0, t, table, noise)
    if seed is None:
        raise ValueError("q_sample needs noise= or seed=")
    target = _TARGETS[_canonical_target(return_target or "epsilon")]
    seed_t = as_seed(seed, x0.device)
    x_t, tgt = implementation("q_sample_seeded", backend, x0.device)(
        x0, t, table, seed_t, counter_offset(sample_offset, x0.shape[0], seed_t), target)
    return (x_t, tgt) if return_target is not None else x_t


def reverse_step(x_t: torch.Tensor, model_out: torch.Tensor, t, schedule, *,
                 noise: Optional[torch.Tensor] = None, seed=None, sample_offset: int = 0,
                 prediction_type: str = "epsilon", variance_type: str = "fixed_small",
                 clip_denoised: bool = True, clip_range: float = 1.0,
                 guidance_scale: Optional[float] = None,
                 out: Optional[torch.Tensor] = None, first_bad: Optional[torch.Tensor] = None,
                 backend: Optional[str] = None) -> torch.Tensor:
    """One ancestral DDPM step x_t -> x_{t-1} ~ p(x_{t-1} | x_t) (Ho et al. Algorithm 2).

    x_t, model_out: float [B, ...] of one shape (dtypes may differ; math in float32); t: int or
    int tensor [] / [B]. Noise: ``noise`` tensor, or ``seed`` (Philox stream 1 at (t, sample,
    element), sample counted from ``sample_offset``). No noise is added at t = 0.
    ``guidance_scale`` w: classifier-free guidance in the same pass: model_out is [2B, ...]
    (conditional rows first) and the step uses m_u + w (m_c - m_u).
    Returns x_{t-1} in x_t's dtype (written into ``out`` if given; out may be x_t itself).
    ``first_bad``: an int64 tensor [] / [1] on x_t's device, updated in the same pass to
    max(first_bad, t[b] of every sample b whose model_out (either half with guidance) has a
    NaN/inf element); a sampler starting it at -1 with t descending gets the first bad timestep.
    """
    w = _guidance_scale(guidance_scale)
    table, t, seed_t = _step_inputs(x_t, model_out, t, schedule, noise, seed, guided=w is not None)
    args = (x_t, model_out, t, table, noise, seed_t, counter_offset(sample_offset, x_t.shape[0], seed_t),
            prediction_code(prediction_type), variance_code(variance_type),
            bool(clip_denoised), check_param("clip_range", clip_range, low=0.0), w)
    if out is None and first_bad is None:
        return implementation("reverse_step", backend, x_t.device)(*args)
    out = _out_buffer("reverse_step", x_t, out, first_bad, (model_out, noise))
    implementation("reverse_step_out", backend, x_t.device)(*args, out, first_bad)  # one write, in place
    return out


def ddim_step(x_t: torch.Tensor, model_out: torch.Tensor, t, t_prev, schedule, *, eta: float = 0.0,
              noise: Optional[torch.Tensor] = None, seed=None, sample_offset: int = 0,
              prediction_type: str = "epsilon", clip_denoised: bool = True, clip_range: float = 1.0,
              final_alpha_bar: float = 1.0, guidance_scale: Optional[float] = None,
              out: Optional[torch.Tensor] = None, first_bad: Optional[torch.Tensor] = None,
              backend: Optional[str] = None) -> torch.Tensor:
    """One DDIM step x_t -> x_{t_prev} (Song et al. eq. 12); t_prev < 0 means "the end", whose
    ᾱ is ``final_alpha_bar`` (1.0, or ᾱ_0 for diffusers' set_alpha_to_one=False).
    ``eta`` = 0 is deterministic; eta > 0 needs ``noise`` or ``seed``. ``guidance_scale``: as
    in ``reverse_step`` (model_out [2B, ...], conditional rows first). ``out`` (may be x_t) and
    ``first_bad`` (the NaN record, int64 [] / [1]): as in ``reverse_step``."""
    eta = check_param("eta", eta, low=0.0, low_inclusive=True, finite=True)
    final_alpha_bar = check_param("final_alpha_bar", final_alpha_bar, low=0.0, high=1.0)
    clip_range = check_param("clip_range", clip_range, low=0.0)
    w = _guidance_scale(guidance_scale)
    table, t, seed_t = _step_inputs(x_t, model_out, t, schedule, noise, seed, need_noise=eta > 0,
                                    guided=w is not None)
    t_prev = _as_prev_timestep(t_prev, x_t, table.shape[0])
    check_prev_timestep(t_prev, t, table.shape[0])
    args = (x_t, model_out, t, t_prev, table, noise, seed_t, counter_offset(sample_offset, x_t.shape[0], seed_t),
            eta, prediction_code(prediction_type), bool(clip_denoised), clip_range, final_alpha_bar, w)
    if out is None and first_bad is None:
        return implementation("ddim_step", backend, x_t.device)(*args)
    out = _out_buffer("ddim_step", x_t, out, first_bad, (model_out, noise))
    implementation("ddim_step_out", backend, x_t.device)(*args, out, first_bad)  # one write, in place
    return out


def multistep_update(x: torch.Tensor, model_out: torch.Tensor, history: torch.Tensor, table: torch.Tensor,
                     step, *, guidance_scale: Optional[float] = None,
                     backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a multistep solver (DPM-Solver++, UniPC) as one fused linear combination:
    with row ``r = table[step]`` (float64 ``[steps, 8]``, samplers/multistep.py builds it),
    ``x0 = r[0]·x + r[1]·model_out`` and ``x_next = r[2]·x + r[3]·x0 + Σ_k r[4+k]·history[k]``.

    x, model_out: float [B, ...] of one shape; history: ``[K, B, ...]`` with K in 0..3 (the
    last x0 predictions, in ring order); step: int or int tensor ``[]``/``[1]`` on x's device (read
    on the device). ``guidance_scale`` w: classifier-free guidance in the same pass, model_out is
    then [2B, ...] (conditional rows first) and the update reads m_u + w (m_c - m_u). Returns
    ``(x_next, x0)`` in x's dtype (docs/ops_contract.md)."""
    w = _guidance_scale(guidance_scale)
    check_float("x", x)
    check_float("model_out", model_out)
    check_float("history", history)
    check_rank("x", x, 2)
    if w is None:
        check_same_shape("model_out", model_out, "x", x)
    else:
        check_guided_shape(model_out, x)
    if history.dim() != x.dim() + 1 or tuple(history.shape[1:]) != tuple(x.shape) or history.shape[0] > 3:
        raise ValueError(f"history must have shape [K, *x.shape] = [K, {', '.join(map(str, x.shape))}] "
                         f"with K <= 3, got {tuple(history.shape)}")
    if not isinstance(table, torch.Tensor) or table.dtype != torch.float64 or table.dim() != 2 \
            or table.shape[1] != 8 or table.shape[0] < 1:
        raise ValueError("table must be a float64 tensor [steps, 8] (samplers/multistep.py), got "
                         f"{getattr(table, 'dtype', type(table).__name__)} {tuple(getattr(table, 'shape', ()))}")
    check_same_device(x=x, model_out=model_out, history=history, table=table)
    step = as_timestep(step, 1, table.shape[0], x.device).reshape(-1)[:1]
    return implementation("multistep_update", backend, x.device)(x, model_out, history, table, step, w)


def temb_add(h: torch.Tensor, temb: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """h + temb broadcast over space: h [B, C, *spatial], temb [B, C]. Returns h's dtype."""
    check_float("h", h)
    check_float("temb", temb)
    check_rank("h", h, 3)
    _check_temb(temb, h)
    return implementation("temb_add", backend, h.device)(h, temb)


def groupnorm_temb_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int,
                        temb: Optional[torch.Tensor] = None, *, eps: float = 1e-5,
                        temb_mode: Optional[str] = None, apply_silu: bool = True,
                        backend: Optional[str] = None) -> torch.Tensor:
    """silu(GroupNorm(x [+ temb]) [+ temb]) in one pass per group.

    x [B, C, *spatial]; weight, bias [C]; temb [B, C] added "before_norm" or "after_norm"
    (``temb_mode``, default before_norm when temb is given). Statistics in float32."""
    check_float("x", x)
    check_rank("x", x, 3)
    C = x.shape[1]
    if not isinstance(num_groups, int) or num_groups <= 0 or C % num_groups:
        raise ValueError(f"num_groups must be a positive divisor of C={C}, got {num_groups!r}")
    for name, p in (("weight", weight), ("bias", bias)):
        check_float(name, p)
        if p.shape != (C,):
            raise ValueError(f"{name} must have shape [{C}], got {tuple(p.shape)}")
    if temb is not None:
        check_float("temb", temb)
        _check_temb(temb, x)
        temb_mode = temb_mode or "before_norm"
    if temb_mode not in TEMB_MODES:
        raise ValueError(f"temb_mode must be before_norm | after_norm | None, got {temb_mode!r}")
    mode = TEMB_MODES[temb_mode]
    if mode and temb is None:
        raise ValueError(f"temb_mode={temb_mode!r} needs a temb tensor")
    check_same_device(x=x, weight=weight, bias=bias, temb=temb)
    # eps > 0: a group of one element has variance 0, and eps = 0 would make it 0/0
    eps = check_param("eps", eps, low=0.0, finite=True)
    return implementation("groupnorm_temb_silu", backend, x.device)(
        x, weight, bias, temb, num_groups, eps, mode, bool(apply_silu))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
              backend: Optional[str] = None) -> torch.Tensor:
    """softmax(q k^T scale) v per batch and head: q [B, H, Nq, D], k and v [B, H, Nk, D], any strides;
    no mask, no dropout, not causal. ``scale`` defaults to 1/sqrt(D) (F.scaled_dot_product_attention's).
    Math in float32 (float64 on the reference backend); returns q's dtype [B, H, Nq, D]. The C++ kernel
    (CPU only; other devices run the reference) is for small head dims: the compiled sampler uses it
    in place of ATen's flash kernel (samplers/attention_pass.py)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float(name, x)
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, H, N, D], got shape {tuple(x.shape)}")
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k and v must be [B, H, Nk, D] for q [B, H, Nq, D] = {tuple(q.shape)}, got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    check_same_device(q=q, k=k, v=v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[3]) if q.shape[3] else 1.0   # D = 0: q k^T is 0 at any scale
    scale = check_param("scale", scale, finite=True)
    return implementation("attention", backend, q.device)(q, k, v, scale)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
            backend: Optional[str] = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 ``weight`` [K, C, 3, 3], stride 1, one
    group: x [N, C, H, W] of any strides, bias [K] or None. Math in float32 (float64 on the
    reference backend); returns x's dtype, channels-last. The C++ kernel (CPU only; other devices
    run the reference) is Winograd's F(2x2, 3x3); the compiled sampler uses it in place of ATen's
    convolution (samplers/conv_pass.py). NaN or inf in a 4x4 input patch makes its whole 2x2
    output tile NaN (docs/ops_contract.md)."""
    check_float("x", x)
    check_float("weight", weight)
    if x.dim() != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1] != x.shape[1] or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"weight must be [K, C, 3, 3] with C = {x.shape[1]} (x's channels), got shape "
                         f"{tuple(weight.shape)}")
    if bias is not None:
        check_float("bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must be [K] with K = {weight.shape[0]}, got shape {tuple(bias.shape)}")
    check_same_device(x=x, weight=weight, bias=bias)
    return implementation("conv3x3", backend, x.device)(x, weight, bias)


def sinusoidal_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0,
                         downscale_freq_shift: float = 1.0, flip_sin_to_cos: bool = False) -> torch.Tensor:
    """Transformer sinusoidal embedding of timesteps t [B] -> float32 [B, dim] (Ho et al.'s
    get_timestep_embedding: frequencies exp(-log(max_period) i / (dim/2 - shift)), [sin, cos])."""
    if t.dim() != 1:
        raise ValueError(f"t must have shape [B], got {tuple(t.shape)}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    half = dim // 2
    if half - downscale_freq_shift <= 0:   # the frequency exponent divides by this: 0 gives NaN
        raise ValueError(f"dim // 2 - downscale_freq_shift must be > 0, got dim={dim}, "
                         f"downscale_freq_shift={downscale_freq_shift}: use dim >= 4 (or shift 0)")
    exponent = -torch.log(torch.tensor(max_period)) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


# --- helpers -----------------------------------------------------------------------------------

def _guidance_scale(w) -> Optional[float]:
    return None if w is None else check_param("guidance_scale", w, finite=True)


def _step_inputs(x_t, model_out, t, schedule, noise, seed, need_noise: bool = True, guided: bool = False):
    check_float("x_t", x_t)
    check_float("model_out", model_out)
    check_rank("x_t", x_t, 2)
    if guided:
        check_guided_shape(model_out, x_t)
    else:
        check_same_shape("model_out", model_out, "x_t", x_t)
    check_same_device(x_t=x_t, model_out=model_out, noise=noise)
    table = as_table(schedule, x_t.device)
    t = as_timestep(t, x_t.shape[0], table.shape[0], x_t.device)
    if noise is not None:
        check_float("noise", noise)
        check_same_shape("noise", noise, "x_t", x_t)
        if seed is not None:
            raise ValueError("give either noise= or seed=, not both")
        return table, t, None
    if seed is None:
        if need_noise:
            raise ValueError("a stochastic step needs noise= or seed=")
        return table, t, None
    return table, t, as_seed(seed, x_t.device)


def _as_prev_timestep(t_prev, x_t, T: int) -> torch.Tensor:
    if isinstance(t_prev, int) and not isinstance(t_prev, bool):
        if not -1 <= t_prev < T:
            raise ValueError(f"t_prev {t_prev} is out of range [-1, {T})")
        return torch.tensor(t_prev, dtype=torch.int64, device=x_t.device)
    if not isinstance(t_prev, torch.Tensor) or t_prev.dtype not in (torch.int32, torch.int64):
        raise TypeError("t_prev must be an int or an integer tensor")
    if t_prev.device != x_t.device:
        raise ValueError(f"t_prev is on {t_prev.device} but the data is on {x_t.device}")
    return t_prev


def _check_temb(temb: torch.Tensor, h: torch.Tensor) -> None:
    if temb.shape != h.shape[:2]:
        raise ValueError(f"temb must have shape [B, C] = {tuple(h.shape[:2])}, got {tuple(temb.shape)}")
    check_same_device(h=h, temb=temb)


def _canonical_target(name: str) -> str:
    from .enums import PREDICTION_ALIASES
    if name not in PREDICTION_ALIASES:
        raise ValueError(f"unknown target {name!r}; use epsilon | sample | v_prediction")
    return PREDICTION_ALIASES[name]


def _out_buffer(op: str, x_t: torch.Tensor, out: Optional[torch.Tensor], first_bad: Optional[torch.Tensor],
                inputs: tuple) -> torch.Tensor:
    """The checked ``out`` of a step's out-variant (a new one when only first_bad was given)."""
    check_first_bad(op, first_bad, x_t.device)
    if out is None:
        return torch.empty_like(x_t, memory_format=torch.contiguous_format)
    if out.shape != x_t.shape or out.dtype != x_t.dtype or out.device != x_t.device:
        raise ValueError(f"out must be {x_t.dtype} {tuple(x_t.shape)} on {x_t.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    if torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in (x_t, out, *inputs)):
        raise ValueError(f"{op}(..., out=) writes out in place and has no gradient; call it without "
                         "out= to differentiate through the step (or under torch.no_grad())")
    return out
