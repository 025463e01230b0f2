"""``python -m ddpm_fast demo`` (``make demo``): train a small UNet on the embedded 16x16 digits
for a few minutes on the CPU, sample 64 digits with the fast sampler, write the grid and the loss
curve, print the quality metric and the sampler's speed against the reference backend."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import torch

__all__ = ["run_demo", "DEMO_CONFIG"]

# Chosen by measurement on the 2-core CPU machine (shared, load ~7): UNet.tiny itself (1.1 M
# parameters) takes ~1 s per batch of 64 there, too slow for a few minutes; ch=16 (0.28 M) takes
# ~0.4 s. After 600 steps, epsilon-prediction left ~15% of DDIM samples as noise (FD 23.2,
# confidence 0.82), epsilon + min-SNR-5 ~10% (FD 18.1, 0.83), v-prediction + min-SNR-5 none
# (FD 19.1, 0.83; every sample a clean stroke): v + min-SNR-5 it is.
DEMO_CONFIG = dict(
    data="digits", model="tiny", model_kwargs={"ch": 16, "ch_mult": [1, 2, 2]},
    schedule="linear", T=1000, prediction_type="v_prediction", min_snr_gamma=5.0,
    steps=1000, batch_size=64, lr=2e-3, warmup_steps=100, lr_schedule="cosine", min_lr_ratio=0.1,
    grad_clip=1.0, ema_decay=0.995, ckpt_every=250, sample_every=0, sample_n=64,
    sampler="ddim", sample_steps=50, metric=True,
)


def _time_sample(model, n, shape, cfg, **kw):
    """(samples, seconds) for n samples, after a 2-step warm-up call (first-call costs excluded)."""
    from ..sampling import sample
    from ..schedule import NoiseSchedule
    schedule = NoiseSchedule.make(cfg.schedule, cfg.T)
    sample(model, (2, *shape), schedule=schedule, sampler="ddim", steps=2, seed=cfg.seed,
           prediction_type=cfg.prediction_type, **kw)
    t0 = time.perf_counter()
    x = sample(model, (n, *shape), schedule=schedule, sampler=cfg.sampler, steps=cfg.sample_steps,
               seed=cfg.seed, prediction_type=cfg.prediction_type, **kw)
    return x, time.perf_counter() - t0


class _TooSlow(Exception):
    pass


def calibrate_steps(cfg, budget_s: float, *, min_steps: int = 300, max_steps: int = 4000,
                    probe: int = 10, max_s: float = float("inf")) -> tuple[int, float]:
    """How many training steps of ``cfg`` fit in ``budget_s`` seconds on this machine:
    times ``probe`` real steps (same code path, a throwaway directory), median of the last ones
    (inf when the probe would take longer than ``max_s``).
    Returns (steps rounded down to a multiple of 50 within [min_steps, max_steps], s per step)."""
    import tempfile
    from . import train
    stamps = [time.perf_counter()]

    def tick(step, info):
        stamps.append(time.perf_counter())
        if stamps[-1] - stamps[0] > max_s:
            raise _TooSlow

    try:
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg.replace(steps=probe, out_dir=tmp, sample_n=0, ckpt_every=0, progress=False,
                              metric=False), callback=tick)
    except _TooSlow:
        return min_steps, float("inf")
    gaps = sorted(b - a for a, b in zip(stamps[3:], stamps[4:]))
    per_step = gaps[len(gaps) // 2]
    steps = int(budget_s / per_step) // 50 * 50
    return max(min_steps, min(max_steps, steps)), per_step


def run_demo(out_dir: str = "out", steps: Optional[int] = None, threads: Optional[int] = None,
             seed: int = 0, reference: bool = True, train_minutes: float = 4.0) -> int:
    """Train for ``steps`` (default: as many as fit in ``train_minutes`` here), sample, report."""
    from . import TrainConfig, train
    from ..utils.image import save_grid
    t_all = time.perf_counter()
    cfg = TrainConfig(**{**DEMO_CONFIG, "out_dir": out_dir, "seed": seed})
    if threads:
        torch.set_num_threads(threads)
    elif torch.get_num_threads() > 1:
        # small convolutions may run faster on one thread when the cores are shared: measure
        n = torch.get_num_threads()
        timing = {}
        for k in (1, n):   # one thread first: it bounds how long the n-thread probe may take
            torch.set_num_threads(k)
            limit = max(5.0, 3 * 6 * timing[1]) if 1 in timing else float("inf")
            timing[k] = calibrate_steps(cfg, 60, probe=6, max_s=limit)[1]
        best = min(timing, key=timing.get)
        torch.set_num_threads(best)
        print(f"demo: {' vs '.join(f'{k} threads {v * 1e3:.0f} ms' for k, v in timing.items())} "
              f"per step -> {best}", file=sys.stderr)
    if steps is None:
        steps, per_step = calibrate_steps(cfg, train_minutes * 60)
        print(f"demo: {per_step * 1e3:.0f} ms per training step here -> {steps} steps "
              f"(~{train_minutes:g} min; --steps fixes the count)", file=sys.stderr)
    cfg = cfg.replace(steps=steps)
    print(f"demo: training a {cfg.model_kwargs} UNet on the 16x16 digits for {cfg.steps} steps "
          f"(batch {cfg.batch_size}, T={cfg.T}, {torch.get_num_threads()} threads) -> {out_dir}/",
          file=sys.stderr)
    res = train(cfg.replace(sample_n=0, metric=False))     # the demo samples and scores below
    shape = (1, 16, 16)
    lines = [f"trained {res.step} steps in {res.timings.get('train_s', 0):.0f} s "
             f"({res.images_per_second:.0f} images/s); final loss (mean of last 100 steps) "
             f"{_tail_mean(res.losses):.4f}"]
    # the sampler: fast path (fused backend, compiled loop where available) vs the reference ops
    # eager with the fused ops: compile=True paid ~90 s of torch.compile on the 2-core CPU for a
    # 50-step run that takes ~7 s eagerly, so the demo leaves it off (ddpm-fast sample --compile)
    fast_kw = {"backend": "auto"}
    x_fast, t_fast = _time_sample(res.ema, 64, shape, cfg, **fast_kw)
    save_grid(x_fast, os.path.join(out_dir, "samples.png"), scale=4)
    steps_s = cfg.sample_steps
    lines.append(f"sampled 64 digits ({cfg.sampler}, {steps_s} steps, fused ops backend "
                 f"{_backend_name()}) in {t_fast:.2f} s")
    if reference:
        from .. import ops
        with ops.use_backend("reference"):      # the UNet's norms and the sampler steps alike
            x_ref, t_ref = _time_sample(res.ema, 64, shape, cfg, backend="reference")
        diff = float((x_fast - x_ref).abs().max())
        lines.append(f"reference backend: {t_ref:.2f} s -> fast sampler {t_ref / t_fast:.2f}x "
                     f"(max |fast - reference| = {diff:.2e})")
    from ..metrics import DigitsMetric
    quality = DigitsMetric(cache=os.path.join(out_dir, "digits_classifier.safetensors")).evaluate(x_fast)
    lines.append(str(quality))
    lines.append(f"grid: {os.path.join(out_dir, 'samples.png')}, loss curve: {os.path.join(out_dir, 'loss.png')}, "
                 f"checkpoint: {res.checkpoint}")
    lines.append(f"demo total {time.perf_counter() - t_all:.0f} s")
    with open(os.path.join(out_dir, "demo.json"), "w") as f:
        json.dump({"steps": res.step, "loss_last100": _tail_mean(res.losses), "sample_s": t_fast,
                   "quality": quality.as_dict(), "timings": res.timings}, f, indent=2)
    print("\n".join(lines))
    return 0


def _backend_name(op: str = "ddim_step") -> str:
    """Which backend "auto" picks for ``op`` on the CPU (the first available in the auto order)."""
    from ..ops import dispatch
    fn = dispatch.implementation(op, "auto", torch.device("cpu"))
    return dispatch.backend_of(op, fn) or "auto"


def _tail_mean(losses, k: int = 100) -> float:
    import math
    tail = [v for v in losses[-k:] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else float("nan")
