"""``python -m ddpm_fast demo`` (``make demo``): train a small class-conditional UNet on the
embedded 16x16 digits for a fixed number of steps on the CPU, sample one row per digit with
classifier-free guidance, write the grid and the loss curve, print the quality metric (with the
class accuracy) and the sampler's speed against the reference backend and diffusers' loop on the
same model (ddpm_fast/training/demo_timing.py).

The run is fixed: the same steps, seed and thread count on every machine, so the same command
gives the same model and the same grid everywhere (up to float rounding between CPU kernels);
only the time it takes depends on the machine.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import torch

from .demo_timing import fast_path_name, fast_sample, speed_line

__all__ = ["run_demo", "DEMO_CONFIG", "DEMO_GUIDANCE", "DEMO_PER_CLASS"]

# Chosen by measurement on the 2-core CPU machine: UNet.tiny itself (1.1 M parameters) takes
# ~1 s per batch of 64 there, too slow for a few minutes; ch=16 (0.28 M) ~0.29 s of CPU time per
# training step on one thread. After 600 steps, epsilon-prediction left ~15% of DDIM samples as
# noise (FD 23.2, confidence 0.82), epsilon + min-SNR-5 ~10% (FD 18.1, 0.83), v-prediction +
# min-SNR-5 none (FD 19.1, 0.83; every sample a clean stroke): v + min-SNR-5 it is.
# One thread: results do not depend on how many cores a machine has, and on the shared 2-core
# machine two threads were slower (waiting on each other while other processes ran).
# 600 steps: 200 s of CPU time for the whole training process (so about as long on the idle
# 2-core machine), leaving the sampling, the metric and the reference timing inside 5 minutes.
# Measured at seed 0, 100 samples (10 per digit, DDIM 50): guidance 1.5 / 2 / 3 gave class
# accuracy 0.98 / 1.00 / 1.00 and FD 7.6 / 14.5 / 28.8, the unconditional model of the same
# config FD 14.2 (held-out real digits 14.0): stronger guidance trades diversity for accuracy.
DEMO_CONFIG = dict(
    data="digits", model="tiny", model_kwargs={"ch": 16, "ch_mult": [1, 2, 2]},
    conditional=True, cond_drop_prob=0.1,
    schedule="linear", T=1000, prediction_type="v_prediction", min_snr_gamma=5.0,
    steps=600, batch_size=64, lr=2e-3, warmup_steps=100, lr_schedule="cosine", min_lr_ratio=0.1,
    grad_clip=1.0, ema_decay=0.995, ckpt_every=250, sample_every=0, sample_n=0,
    sampler="ddim", sample_steps=50, metric=False, threads=1,
)
DEMO_GUIDANCE = 3.0      # classifier-free guidance scale of the demo's samples
# guidance_rescale (Lin et al. 2023, diffusers' name) of the demo's samples. Measured on the demo
# model (seed 0, DDIM 50, 2026-12-07): at guidance 3 the FD against the null class's
# (unconditional) samples was 1.33x / 1.11x / 0.98x with rescale 0 / 0.7 / 1.0 on 100 samples,
# and 1.52x / 1.28x / 1.14x on 500; class accuracy 1.00 in every case.
DEMO_GUIDANCE_RESCALE = 1.0
DEMO_PER_CLASS = 10      # samples per digit: a 10 x 10 grid, 100 images for the metric


def _time_sample(model, labels, cfg, guidance, rescale=0.0):
    """(samples, seconds) for one sample per label on ddpm_fast's eager path
    (demo_timing.fast_sample), after a 2-step warm-up call (first-call costs excluded)."""
    from ..schedule import NoiseSchedule
    from .conditioning import guidance_kwargs
    schedule = NoiseSchedule.make(cfg.schedule, cfg.T)
    shape = (1, 16, 16)
    fast_sample(model, (2, *shape), schedule=schedule, sampler="ddim", steps=2, seed=cfg.seed,
                prediction_type=cfg.prediction_type, **guidance_kwargs(labels[:2], model.null_class, guidance, rescale))
    t0 = time.perf_counter()
    x = fast_sample(model, (labels.shape[0], *shape), schedule=schedule, sampler=cfg.sampler,
                    steps=cfg.sample_steps, seed=cfg.seed, prediction_type=cfg.prediction_type,
                    **guidance_kwargs(labels, model.null_class, guidance, rescale))
    return x, time.perf_counter() - t0


def _unconditional_quality(model, labels, cfg, metric):
    """The metric of the same number of samples from the null class (the unconditional model
    classifier-free guidance starts from), same seed: the FD the guided samples are held to."""
    from ..schedule import NoiseSchedule
    x = fast_sample(model, (labels.shape[0], 1, 16, 16), schedule=NoiseSchedule.make(cfg.schedule, cfg.T),
                    sampler=cfg.sampler, steps=cfg.sample_steps, seed=cfg.seed, prediction_type=cfg.prediction_type,
                    model_kwargs={"y": torch.full_like(labels, model.null_class)})
    return metric.evaluate(x, None)


def run_demo(out_dir: str = "out", steps: Optional[int] = None, threads: Optional[int] = None,
             seed: int = 0, reference: bool = True, guidance: float = DEMO_GUIDANCE,
             per_class: int = DEMO_PER_CLASS, guidance_rescale: float = DEMO_GUIDANCE_RESCALE) -> int:
    """Train ``steps`` (default DEMO_CONFIG's) on ``threads`` (default 1), sample ``per_class``
    digits of each class with guidance scale ``guidance`` (and ``guidance_rescale``), report
    their quality against the unconditional (null class) samples'."""
    from . import TrainConfig, train
    from ..utils.image import save_grid
    from .conditioning import class_rows
    t_all, cpu_all = time.perf_counter(), time.process_time()
    over = {"out_dir": out_dir, "seed": seed}
    over.update({k: v for k, v in (("steps", steps), ("threads", threads)) if v is not None})
    cfg = TrainConfig(**{**DEMO_CONFIG, **over})
    torch.set_num_threads(cfg.threads)
    print(f"demo: training a class-conditional {cfg.model_kwargs} UNet on the 16x16 digits for "
          f"{cfg.steps} steps (batch {cfg.batch_size}, T={cfg.T}, labels dropped with p="
          f"{cfg.cond_drop_prob}, {cfg.threads} thread{'s' if cfg.threads > 1 else ''}) -> {out_dir}/",
          file=sys.stderr)
    res = train(cfg)                      # the demo samples and scores below
    K = res.ema.num_classes
    lines = [f"trained {res.step} steps in {res.timings.get('train_s', 0):.0f} s "
             f"({res.images_per_second:.0f} images/s); final loss (mean of last 100 steps) "
             f"{_tail_mean(res.losses):.4f}"]
    # the sampler eager (demo_timing.EAGER_PATH_NAME): compile=True would build once per batch
    # size here; the speed line below compiles once and times that
    labels = class_rows(K, per_class)
    x_fast, t_fast = _time_sample(res.ema, labels, cfg, guidance, guidance_rescale)
    g_text = f"{guidance:g}" + (f", rescale {guidance_rescale:g}" if guidance_rescale and guidance != 1 else "")
    grid = save_grid(x_fast, os.path.join(out_dir, "samples.png"), nrow=per_class, scale=4)
    lines.append(f"sampled {per_class} digits of each class 0-{K - 1} (one row per class; {cfg.sampler}, "
                 f"{cfg.sample_steps} steps, guidance {g_text}, {fast_path_name(compiled=False)}) in {t_fast:.2f} s")
    if reference:
        # the first two rows only (sample i depends on (seed, i) alone): a fifth of the cost,
        # enough for the speed ratios against the reference backend and diffusers' loop
        lines.append(speed_line(res.ema, labels[:2 * per_class], cfg, guidance, rescale=guidance_rescale))
    from ..metrics import DigitsMetric
    metric = DigitsMetric(cache=os.path.join(out_dir, "digits_classifier.safetensors"))
    quality = metric.evaluate(x_fast, labels)
    lines.append(str(quality))
    uncond = _unconditional_quality(res.ema, labels, cfg, metric)
    ratio = quality.frechet / uncond.frechet
    lines.append(f"guidance {g_text} vs the unconditional model (null class, same seed, {labels.shape[0]} "
                 f"samples): FD {quality.frechet:.2f} vs {uncond.frechet:.2f} -> {ratio:.2f}x (target <= 1.2x), "
                 f"class accuracy {quality.class_accuracy:.3f} (target >= 0.95)")
    lines.append(f"grid: {grid}, loss curve: {os.path.join(out_dir, 'loss.png')}, "
                 f"checkpoint: {res.checkpoint}")
    lines.append(f"demo total {time.perf_counter() - t_all:.0f} s (CPU time {time.process_time() - cpu_all:.0f} s)")
    with open(os.path.join(out_dir, "demo.json"), "w") as f:
        json.dump({"steps": res.step, "loss_last100": _tail_mean(res.losses), "sample_s": t_fast,
                   "guidance": guidance, "guidance_rescale": guidance_rescale, "quality": quality.as_dict(),
                   "unconditional_quality": uncond.as_dict(), "timings": res.timings}, f, indent=2)
    print("\n".join(lines))
    return 0


def _tail_mean(losses, k: int = 100) -> float:
    import math
    tail = [v for v in losses[-k:] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else float("nan")
