"""``python -m ddpm_fast demo`` (``make demo``): train a small UNet on the embedded 16x16 digits
for a few minutes on the CPU, sample 64 digits with the fast sampler, write the grid and the loss
curve, print the quality metric and the sampler's speed against the reference backend."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from typing import Optional

import torch

__all__ = ["run_demo", "DEMO_CONFIG"]

# Chosen by measurement on the 2-core CPU machine (see the report in the commit message):
# a 16-channel UNet (1, 2, 2) with attention at 4x4 trains at ~0.2-0.4 s per batch of 64 there.
DEMO_CONFIG = dict(
    data="digits", model="tiny", model_kwargs={"ch": 16, "ch_mult": [1, 2, 2]},
    schedule="linear", T=1000, prediction_type="epsilon", min_snr_gamma=None,
    steps=1000, batch_size=64, lr=2e-3, warmup_steps=100, lr_schedule="cosine", min_lr_ratio=0.1,
    grad_clip=1.0, ema_decay=0.995, ckpt_every=250, sample_every=0, sample_n=64,
    sampler="ddim", sample_steps=50, metric=True,
)


def _time_sample(model, n, shape, cfg, **kw):
    from ..sampling import sample
    from ..schedule import NoiseSchedule
    schedule = NoiseSchedule.make(cfg.schedule, cfg.T)
    t0 = time.perf_counter()
    x = sample(model, (n, *shape), schedule=schedule, sampler=cfg.sampler, steps=cfg.sample_steps,
               seed=cfg.seed, prediction_type=cfg.prediction_type, **kw)
    return x, time.perf_counter() - t0


def calibrate_steps(cfg, budget_s: float, *, min_steps: int = 300, max_steps: int = 4000,
                    probe: int = 10) -> tuple[int, float]:
    """How many training steps of ``cfg`` fit in ``budget_s`` seconds on this machine:
    times ``probe`` real steps (same code path, a throwaway directory), median of the last ones.
    Returns (steps rounded down to a multiple of 50 within [min_steps, max_steps], s per step)."""
    import tempfile
    from . import train
    stamps = []
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg.replace(steps=probe, out_dir=tmp, sample_n=0, ckpt_every=0, progress=False, metric=False),
              callback=lambda s, i: stamps.append(time.perf_counter()))
    gaps = sorted(b - a for a, b in zip(stamps[2:], stamps[3:]))
    per_step = gaps[len(gaps) // 2]
    steps = int(budget_s / per_step) // 50 * 50
    return max(min_steps, min(max_steps, steps)), per_step


def run_demo(out_dir: str = "out", steps: Optional[int] = None, threads: Optional[int] = None,
             seed: int = 0, reference: bool = True, train_minutes: float = 4.0) -> int:
    """Train for ``steps`` (default: as many as fit in ``train_minutes`` here), sample, report."""
    from . import TrainConfig, train
    from ..utils.image import save_grid
    t_all = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(**{**DEMO_CONFIG, "out_dir": out_dir, "seed": seed})
    if steps is None:
        steps, per_step = calibrate_steps(cfg, train_minutes * 60)
        print(f"demo: {per_step * 1e3:.0f} ms per training step here -> {steps} steps "
              f"(~{train_minutes:g} min; --steps fixes the count)", file=sys.stderr)
    cfg = cfg.replace(steps=steps)
    print(f"demo: training a {cfg.model_kwargs} UNet on the 16x16 digits for {cfg.steps} steps "
          f"(batch {cfg.batch_size}, T={cfg.T}, {torch.get_num_threads()} threads) -> {out_dir}/",
          file=sys.stderr)
    res = train(cfg)
    shape = (1, 16, 16)
    lines = [f"trained {res.step} steps in {res.timings.get('train_s', 0):.0f} s "
             f"({res.images_per_second:.0f} images/s); final loss (mean of last 100 steps) "
             f"{_tail_mean(res.losses):.4f}"]
    # the sampler: fast path (fused backend, compiled loop where available) vs the reference ops
    fast_kw = {"backend": "auto"}
    if importlib.util.find_spec("ddpm_fast.samplers.fast") is not None:
        fast_kw["compile"] = True
    x_fast, t_fast = _time_sample(res.ema, 64, shape, cfg, **fast_kw)
    save_grid(x_fast, os.path.join(out_dir, "samples.png"), scale=4)
    steps_s = cfg.sample_steps
    lines.append(f"sampled 64 digits ({cfg.sampler}, {steps_s} steps, {fast_kw}) in {t_fast:.2f} s")
    if reference:
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


def _tail_mean(losses, k: int = 100) -> float:
    import math
    tail = [v for v in losses[-k:] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else float("nan")
