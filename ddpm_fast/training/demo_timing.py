"""The demo's speed line: the same trained model, the same digits, steps and guidance, timed
three ways in one process on the same threads — ddpm_fast's sampler (its fastest correct path,
``FAST_PATH``), ddpm_fast with the reference backend (plain PyTorch ops, model norms included),
and diffusers' own ``DDIMScheduler`` loop with the classifier-free guidance combine as its
pipelines write it (when diffusers is importable). Each is warmed up once, then the three are
timed in interleaved rounds and the median kept, so a burst of load on a shared machine hits
them alike. All three start from the same x_T: the line also prints how far apart their
samples are (deterministic DDIM, eta = 0: they agree to float rounding).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

__all__ = ["fast_sample", "fast_path_name", "speed_line", "diffusers_ddim_loop"]

# ddpm_fast's fastest correct path for the demo's speed line, by measurement on the 2-core dev
# machine (AVX-512 EPYC, the demo UNet with random weights, 20 digits, DDIM 50, guidance 3 rescaled
# 1, one thread, 2026-12-07, load ~1-2): eager with the fused C++ step and the UNet's norms on the
# C++ GroupNorm (SIMD since 2026-12-07) 1.10 s against the reference backend's 1.11 s: at this size
# the convolutions are ~70% of the forward and run alike on both; compile=True ~1.2x faster, its
# cold compile 30-45 s of wall time (45 s inside a whole cold demo run of 133 s). The demo's
# 5-minute budget holds that once, so the speed line compiles (its warm-up call, reported apart);
# the demo's own sampling (other batch sizes, each a compile of its own) stays eager.
FAST_PATH_NAME = "compiled, fused {step} step, {norms} norms"   # norms: samplers/graph.py COMPILED_MODEL_BACKEND
EAGER_PATH_NAME = "eager, fused {step} step, {norms} norms"
FAST_MODEL_BACKEND = "auto"   # the backend of the ops inside the UNet (its norms): C++ where built
ROUNDS = 3


def _sample_kw(cfg, labels: torch.Tensor, null_class: int, guidance: float, rescale: float = 0.0) -> dict:
    from ..schedule import NoiseSchedule
    from .conditioning import guidance_kwargs
    return dict(schedule=NoiseSchedule.make(cfg.schedule, cfg.T), sampler=cfg.sampler,
                steps=cfg.sample_steps, seed=cfg.seed, prediction_type=cfg.prediction_type,
                **guidance_kwargs(labels, null_class, guidance, rescale))


def diffusers_ddim_loop(model, x_T: torch.Tensor, labels: torch.Tensor, cfg, guidance: float,
                        rescale: float = 0.0) -> torch.Tensor:
    """diffusers' DDIMScheduler loop on ``model(x, t, y=)`` with classifier-free guidance as its
    pipelines do it (one call on the doubled batch, ``uncond + w (cond - uncond)``, then with
    ``rescale`` its guidance_rescale: the guided output's per-sample std matched to the
    conditional one's, blended by ``rescale``), configured
    as ddpm_fast samples the demo: linear betas, ``prediction_type``, x0 clipped to [-1, 1], ε
    re-derived from the clipped x0 (``use_clipped_model_output=True``), final ᾱ = 1."""
    from diffusers import DDIMScheduler
    if cfg.schedule != "linear" or cfg.sampler != "ddim":
        raise ValueError("the diffusers comparison is written for the demo's linear schedule and DDIM")
    sch = DDIMScheduler(num_train_timesteps=cfg.T, beta_schedule="linear", prediction_type=cfg.prediction_type,
                        clip_sample=True, set_alpha_to_one=True, timestep_spacing="leading")
    sch.set_timesteps(cfg.sample_steps)
    y = torch.cat([labels, torch.full_like(labels, model.null_class)])
    x = x_T
    for t in sch.timesteps:
        out = model(torch.cat([x, x]), t.expand(y.shape[0]), y=y)
        cond, uncond = out.chunk(2)
        guided = uncond + guidance * (cond - uncond)
        if rescale:
            dims = list(range(1, guided.dim()))
            matched = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
            guided = rescale * matched + (1 - rescale) * guided
        x = sch.step(guided, t, x, use_clipped_model_output=True).prev_sample
    return x


def fast_sample(model, shape, compile: bool = False, **kw) -> torch.Tensor:
    """``ddpm_fast.sample`` with the fused step of the "auto" backend and the model's own ops on
    ``FAST_MODEL_BACKEND``; ``compile`` True: the speed line's path (``FAST_PATH_NAME``), else
    the demo's eager one (``EAGER_PATH_NAME``)."""
    from .. import ops
    from ..sampling import sample
    with ops.use_backend(FAST_MODEL_BACKEND):
        return sample(model, shape, backend="auto", compile=compile, **kw)


def fast_path_name(compiled: bool = True) -> str:
    from ..samplers.graph import COMPILED_MODEL_BACKEND
    norms = _backend_name("groupnorm_temb_silu")
    if compiled and COMPILED_MODEL_BACKEND.get("cpu") == "reference":
        norms = "Inductor's"          # the reference ops, traced and fused by Inductor
    return (FAST_PATH_NAME if compiled else EAGER_PATH_NAME).format(step=_backend_name(), norms=norms)


def _median_times(fns: dict, rounds: int = ROUNDS) -> tuple:
    """(median wall seconds of each no-argument function over ``rounds`` interleaved rounds, the
    wall seconds of each one's warm-up call (a compile, for the compiled path))."""
    first = {}
    for k, f in fns.items():
        t0 = time.perf_counter()
        f()
        first[k] = time.perf_counter() - t0
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, first


def speed_line(model, labels: torch.Tensor, cfg, guidance: float,
               with_diffusers: Optional[bool] = None, rounds: int = ROUNDS, rescale: float = 0.0) -> str:
    """One line: ddpm_fast's fastest path vs the reference backend and diffusers' loop on
    ``labels`` (one sample each), with both speed-ups and the largest sample differences.
    ``with_diffusers`` None: when diffusers imports."""
    from .. import ops
    from ..sampling import sample
    if with_diffusers is None:
        try:
            import diffusers  # noqa: F401
            with_diffusers = True
        except ImportError:
            with_diffusers = False
    kw = _sample_kw(cfg, labels, model.null_class, guidance, rescale)
    shape = (labels.shape[0], *model_image_shape(model))
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed))
    out: dict = {}

    def run(name: str, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def go():
            out[name] = fn()
        return go

    def reference():
        with ops.use_backend("reference"):      # the UNet's norms and the sampler steps alike
            return sample(model, shape, x_T=x_T, backend="reference", **kw)

    fns = {"fast": run("fast", lambda: fast_sample(model, shape, compile=True, x_T=x_T, **kw)),
           "reference": run("reference", reference)}
    if with_diffusers:
        fns["diffusers"] = run("diffusers", lambda: diffusers_ddim_loop(model, x_T, labels, cfg, guidance, rescale))
    with torch.no_grad():
        t, first = _median_times(fns, rounds)
    n = labels.shape[0]
    parts = [f"speed on {n} digits ({cfg.sampler}, {cfg.sample_steps} steps, guidance {_guidance_text(guidance, rescale)}, "
             f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}, median of "
             f"{rounds}): ddpm_fast ({fast_path_name()}; first call, which compiles, {first['fast']:.1f} s) "
             f"{t['fast']:.2f} s",
             f"reference backend {t['reference']:.2f} s -> {t['reference'] / t['fast']:.2f}x "
             f"(max |diff| {_maxdiff(out['fast'], out['reference']):.1e})"]
    if with_diffusers:
        parts.append(f"diffusers DDIMScheduler loop {t['diffusers']:.2f} s -> {t['diffusers'] / t['fast']:.2f}x "
                     f"(max |diff| {_maxdiff(out['fast'], out['diffusers']):.1e})")
    else:
        parts.append("diffusers not installed (no loop to compare)")
    return "; ".join(parts)


def _guidance_text(guidance: float, rescale: float) -> str:
    return f"{guidance:g}" + (f" rescaled {rescale:g}" if rescale and guidance != 1 else "")


def model_image_shape(model) -> tuple:
    """(C, H, W) of ddpm_fast's UNet."""
    return (model.in_channels, *model.resolution)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _backend_name(op: str = "ddim_step") -> str:
    """Which backend "auto" picks for ``op`` on the CPU (the first available in the auto order)."""
    from ..ops import dispatch
    fn = dispatch.implementation(op, "auto", torch.device("cpu"))
    return dispatch.backend_of(op, fn) or "auto"
