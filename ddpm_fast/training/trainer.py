"""``ddpm_fast.train``: the DDPM training loop (Ho et al. 2020, Algorithm 1).

Each step s is a pure function of (config, weights, optimizer state, s):
- batch: data positions from :func:`ddpm_fast.data.batch_indices` (seed, s) — no loader to replay;
- timesteps: uniform over [0, T) from the Philox stream keyed by mix(seed, s, 2), per global sample;
- noise and target: the fused ``q_sample(..., seed=mix(seed, s), return_target=...)`` draws ε in the
  kernel, counted by global sample index (so ranks split one global batch);
- conditional runs: a label is dropped to the null class where the Philox uniform keyed by
  mix(seed, s, 3), per global sample, is below ``cond_drop_prob`` (training/conditioning.py);
- torch's RNG (dropout) is reseeded with mix(seed, s, 1, rank).
So ``resume`` (weights, EMA, optimizer, grad scaler, step and loss log from the checkpoint)
continues exactly where the interrupted run was, and its final weights equal an uninterrupted run's.
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn

from .. import ops
from ..data import ImageData, batch_indices, load_dataset
from ..data.indices import mix_seed
from ..schedule import Col, NoiseSchedule
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import STRUCTURAL_KEYS, ConfigError, TrainConfig
from .conditioning import class_count, class_rows, drop_labels
from .config_rules import TARGETS
from .distributed import DistInfo, sample_sharded, setup_distributed

__all__ = ["train", "TrainResult", "build_model", "load_for_sampling", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "last.safetensors"


@dataclass
class TrainResult:
    model: nn.Module            # raw weights after the last step (unwrapped from DDP)
    ema: nn.Module              # EMA weights (what to sample from)
    step: int
    losses: list                # loss per step (mean over ranks), NaN for skipped steps
    checkpoint: Optional[str]
    config: TrainConfig
    samples: Optional[torch.Tensor] = None   # the final grid's images, float [n, C, H, W]
    sample_labels: Optional[torch.Tensor] = None  # conditional runs: their classes, int64 [n]
    quality: object = None                   # metrics.digits.QualityReport on digits data
    images_per_second: float = 0.0
    timings: dict = field(default_factory=dict)


# -- model and data ------------------------------------------------------------------------------

def build_model(config: TrainConfig, image_shape, num_classes: Optional[int] = None) -> nn.Module:
    """The UNet preset named by ``config.model`` for images (C, H, W), with ``model_kwargs``;
    class-conditional on ``num_classes`` classes (plus the null class) when given."""
    from ..models.unet import UNet
    C, H, W = image_shape
    kw = dict(config.model_kwargs)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if config.model == "tiny":
        return UNet.tiny(in_channels=C, resolution=(H, W) if H != W else H, **kw)
    if config.model == "ddpm_cifar10":
        return UNet.ddpm_cifar10(**{"in_channels": C, "resolution": H, **kw})
    if config.model == "unet":
        return UNet(in_channels=C, resolution=H, **kw)
    raise ValueError(f"unknown model {config.model!r}: use tiny | ddpm_cifar10 | unet, or pass model=")


def _load_data(config: TrainConfig) -> ImageData:
    return load_dataset(config.data, config.resolution, config.channels)


def _is_digits(config_or_name) -> bool:
    name = config_or_name if isinstance(config_or_name, str) else config_or_name.data
    return name in ("digits", "sklearn-digits")


# -- the schedule of the step ------------------------------------------------------------------

def lr_at(step: int, c: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant/cosine."""
    if c.warmup_steps > 0 and step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    if c.lr_schedule == "constant":
        return c.lr
    if c.lr_schedule == "cosine":
        span = max(1, c.steps - c.warmup_steps)
        p = min(1.0, (step - c.warmup_steps) / span)
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
    raise ValueError(f"lr_schedule must be constant | cosine, got {c.lr_schedule!r}")


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay after optimizer step ``step``: min(decay, (1 + n) / (10 + n)), n = step + 1, so
    the average does not stay stuck near the random initialisation in short runs."""
    n = step + 1
    return min(decay, (1 + n) / (10 + n))


def _loss_weight(t: torch.Tensor, table: torch.Tensor, target: str, gamma: Optional[float]):
    """min-SNR-γ weights per sample (float32 [B]) for the chosen target, or None."""
    if gamma is None:
        return None
    ab = table[:, Col.ALPHA_BAR].index_select(0, t)
    snr = ab / (1 - ab).clamp_min(1e-20)
    clipped = snr.clamp(max=gamma)
    if target == "epsilon":
        w = clipped / snr.clamp_min(1e-20)
    elif target == "sample":
        w = clipped
    else:
        w = clipped / (snr + 1)
    return w.float()


def _precision(precision: str, device: torch.device):
    """(autocast dtype or None, use GradScaler)."""
    if precision == "auto":
        if device.type == "cuda":
            return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
        return None, False
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision", f"fp16 autocast needs a CUDA device (this run is on "
                                           f"{device}); use bf16 or fp32")
        return torch.float16, True
    raise ConfigError("precision", f"must be auto | fp32 | bf16 | fp16, got {precision!r}")


# -- checkpoint <-> state ------------------------------------------------------------------------

def _load_weights(model: nn.Module, weights: dict, path: str, config: dict) -> None:
    """model.load_state_dict(weights), with an error that names the checkpoint and what it holds
    when the architectures differ (torch's message lists every missing or mismatched key)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise CheckpointError(
            f"{path}: its weights do not fit this model ({first}); the checkpoint was trained with "
            f"model={config.get('model')!r}, model_kwargs={config.get('model_kwargs')}: build that "
            "model, or pass the checkpoint that belongs to yours") from None


def _state_from_checkpoint(ckpt: Checkpoint, model, ema, opt, scaler, path: str) -> None:
    _load_weights(model, ckpt.model, path, ckpt.config)
    _load_weights(ema, ckpt.ema if ckpt.ema is not None else ckpt.model, path, ckpt.config)
    if ckpt.optimizer is not None:
        try:
            opt.load_state_dict(ckpt.optimizer)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: its optimizer state does not fit this model's "
                                  f"parameters ({e}); start a new run (resume=False)") from None
    if scaler is not None and ckpt.scaler:
        scaler.load_state_dict({k: (v.item() if isinstance(v, torch.Tensor) and v.dim() == 0 else v)
                                for k, v in ckpt.scaler.items()})


def _merge_resume_config(saved: dict, overrides: dict) -> TrainConfig:
    cfg = TrainConfig.from_dict(saved)
    changed = {k: v for k, v in overrides.items() if k in saved and _differs(saved[k], v)}
    bad = sorted(k for k in changed if k in STRUCTURAL_KEYS)
    if bad:
        raise ValueError(f"cannot resume with different {bad}: the checkpoint was trained with "
                         + ", ".join(f"{k}={saved[k]!r}" for k in bad))
    return cfg.replace(**overrides)


def _differs(a, b) -> bool:
    import json
    return json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True)   # tuples == lists


def load_for_sampling(path: str, *, use_ema: bool = True, device=None,
                      model: Optional[nn.Module] = None) -> tuple[nn.Module, TrainConfig, Checkpoint]:
    """(model in eval mode with the EMA weights — or the raw ones —, its config, the checkpoint)."""
    ckpt = load_checkpoint(path)
    cfg = _config_of(ckpt, path)
    if model is None:
        if cfg.model == "custom":
            raise ValueError(f"{path} holds a custom model: pass model= to load its weights")
        model = build_model(cfg, image_shape_of(ckpt, path), num_classes_of(ckpt, path))
    weights = ckpt.ema if (use_ema and ckpt.ema is not None) else ckpt.model
    _load_weights(model, weights, path, ckpt.config)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model, cfg, ckpt


def _config_of(ckpt: Checkpoint, path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(ckpt.config)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: its training config is not valid here ({e}); it was "
                              "written by another version of ddpm_fast or edited by hand") from None


def num_classes_of(ckpt: Checkpoint, path) -> Optional[int]:
    """K of a class-conditional checkpoint (stored by :func:`train`), None for an unconditional one."""
    if not ckpt.config.get("conditional", False):
        return None
    k = ckpt.extra.get("num_classes")
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise CheckpointError(f"{path}: a conditional run's checkpoint without num_classes >= 1 in its "
                              f"metadata (got {k!r}); it was not written by ddpm_fast.train")
    return k


def class_names_of(ckpt: Checkpoint) -> Optional[tuple]:
    """The class names a conditional checkpoint was trained with (an image folder's sub-folder
    names), or None (digits, IDX files and older checkpoints: the classes are their numbers)."""
    names = ckpt.extra.get("class_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def image_shape_of(ckpt: Checkpoint, path) -> tuple[int, int, int]:
    """(C, H, W) of the images a checkpoint was trained on (stored by :func:`train`)."""
    shape = ckpt.extra.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise CheckpointError(f"{path}: no image_shape [C, H, W] in its metadata (got {shape!r}): it "
                              "was not written by ddpm_fast.train; load its weights into your own "
                              "model with load_for_sampling(path, model=...)")
    return tuple(shape)


# -- the loop ------------------------------------------------------------------------------------

def train(config: Optional[TrainConfig] = None, *, model: Optional[nn.Module] = None,
          data: Optional[ImageData] = None, resume: bool | str = False,
          callback: Optional[Callable[[int, dict], None]] = None, **overrides) -> TrainResult:
    """Train a DDPM; returns a :class:`TrainResult` (the model, its EMA, the loss log, ...).

    config: a :class:`TrainConfig` (fields may also be given as keyword ``overrides``).
    model: your own ``nn.Module`` (``model(x_t, t) -> prediction``, x [B, C, H, W], t int64 [B]);
      default: the UNet preset ``config.model`` sized for the data.
    data: an :class:`ImageData`, or a data spec for ``config.data`` ("digits", a folder, IDX files).
    resume: True continues from ``<out_dir>/last.safetensors`` when it exists (or a path);
      structural options must match the checkpoint's, ``steps`` may grow.
    callback: ``callback(step, info)`` after every completed step (``step`` = steps done).

    Under torchrun, every process runs this with its slice of the global batch (DDP).
    Timestep convention: t uniform in [0, T), ``q_sample`` at t gives x_t.
    """
    if isinstance(data, (str, os.PathLike)):
        overrides["data"], data = os.fspath(data), None
    elif isinstance(data, torch.Tensor):
        data = ImageData(data, name="tensor")
    elif data is not None and not isinstance(data, ImageData):
        raise TypeError(f"data must be an ImageData, a float/uint8 tensor [N, C, H, W] or a data spec "
                        f"('digits', a folder, IDX files), got {type(data).__name__}")
    if isinstance(model, str):     # the config field (``--model tiny``), not a network
        overrides["model"], model = model, None
    elif model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (your network) or a preset name "
                        f"(tiny | ddpm_cifar10 | unet), got {type(model).__name__}")
    cfg = config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    ckpt_path = None
    ckpt = None
    if resume:
        ckpt_path = resume if isinstance(resume, str) else os.path.join(
            overrides.get("out_dir", cfg.out_dir), CHECKPOINT_NAME)
        if os.path.exists(ckpt_path):
            ckpt = load_checkpoint(ckpt_path)
            explicit = overrides if config is None else {**_explicit(cfg), **overrides}
            cfg = _merge_resume_config(ckpt.config, explicit)
            if cfg.progress and os.environ.get("RANK", "0") == "0":
                print(f"resuming from {ckpt_path} at step {ckpt.step}", file=sys.stderr)
        elif isinstance(resume, str):
            raise FileNotFoundError(f"no checkpoint at {resume}: pass the .safetensors file a "
                                    "previous run wrote (OUT_DIR/last.safetensors), or resume=True")
        elif overrides.get("progress", cfg.progress) and os.environ.get("RANK", "0") == "0":
            print(f"no checkpoint at {ckpt_path}: starting at step 0", file=sys.stderr)
    if ckpt is None:
        cfg = cfg.replace(**overrides) if overrides else cfg
    if model is not None:
        cfg = cfg.replace(model="custom")
    elif cfg.model == "custom":
        raise ConfigError("model", "'custom' is a network passed in: call train(model=your_module)")
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        return _train(cfg, model, data, ckpt, callback)


def _explicit(cfg: TrainConfig) -> dict:
    """Fields of cfg that differ from the defaults (what the caller asked for on resume)."""
    default = TrainConfig().to_dict()
    return {k: v for k, v in cfg.to_dict().items() if _differs(default[k], v)}


def _train(cfg: TrainConfig, user_model, data, ckpt, callback) -> TrainResult:
    timings = {}
    t_start = time.perf_counter()
    info, device = setup_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        return _train_inner(cfg, user_model, data, ckpt, callback, info, device, timings, t_start)
    finally:
        torch.set_num_threads(threads)


def _train_inner(cfg, user_model, data, ckpt, callback, info: DistInfo, device, timings, t_start):
    import copy
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    target = TARGETS[cfg.prediction_type]          # every field was checked by TrainConfig
    data = data if data is not None else _load_data(cfg)
    image_shape = data.shape
    schedule = NoiseSchedule.make(cfg.schedule, cfg.T)
    if target == "epsilon" and schedule.zero_terminal_snr:
        raise ValueError("zero-terminal-SNR schedules need prediction_type='v_prediction'")
    table = schedule.table(device)
    amp_dtype, use_scaler = _precision(cfg.precision, device)

    K = _num_classes(cfg, data, ckpt)                             # None: unconditional
    torch.manual_seed(mix_seed(cfg.seed, 0xC0FFEE))             # initial weights: same on all ranks
    net = user_model if user_model is not None else build_model(cfg, image_shape, K)
    net.to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = _optimizer(cfg, net.parameters())
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    step, losses = 0, []
    if ckpt is not None:
        _state_from_checkpoint(ckpt, net, ema, opt, scaler, ckpt.path)
        step = ckpt.step
        if ckpt.extra.get("world_size", 1) != info.world_size:
            warnings.warn(f"resuming a {ckpt.extra.get('world_size', 1)}-process run with "
                          f"{info.world_size} processes: the global batch changes, so the run will "
                          "not equal an uninterrupted one", RuntimeWarning, stacklevel=3)
        losses = ckpt.losses.tolist()[:step] if ckpt.losses is not None else [float("nan")] * step
    ema_params = [p for p in ema.parameters()]
    net_params = [p for p in net.parameters()]
    ema_buffers = list(ema.buffers())
    net_buffers = list(net.buffers())

    if info.enabled:
        ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp = net
    fwd = torch.compile(ddp) if cfg.compile else ddp

    out_dir = cfg.out_dir
    if info.is_main:
        os.makedirs(out_dir, exist_ok=True)
    extra = {"image_shape": list(image_shape), "data_name": data.name, "world_size": info.world_size,
             "n_params": sum(p.numel() for p in net.parameters())}
    if K is not None:
        extra["num_classes"] = K
        if data.class_names is not None and len(data.class_names) == K:
            extra["class_names"] = list(data.class_names)
    B, N, W = cfg.batch_size, len(data), info.world_size
    offset = info.rank * B
    bar = None
    if cfg.progress and info.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                   file=sys.stderr)
    saved_path = None
    nonfinite_run = 0
    smooth = None
    t_loop = time.perf_counter()
    start_step = step
    imgs_done = 0
    ckpt_file = os.path.join(out_dir, CHECKPOINT_NAME)

    def write_checkpoint():
        nonlocal saved_path
        if info.is_main:
            saved_path = save_checkpoint(ckpt_file, Checkpoint(
                step=step, config=cfg.to_dict(), model=net.state_dict(), ema=ema.state_dict(),
                optimizer=opt.state_dict(), scaler=scaler.state_dict() if scaler else None,
                losses=torch.tensor(losses, dtype=torch.float32), extra=extra))
            from ..utils.image import save_loss_curve
            save_loss_curve(losses, os.path.join(out_dir, "loss.png"),
                            title=f"training loss ({cfg.prediction_type}), step {step}")
        info.barrier()

    while step < cfg.steps:
        # 1. the step's randomness, all a function of (seed, step, global sample index)
        torch.manual_seed(mix_seed(cfg.seed, step, 1, info.rank))
        idx = batch_indices(step, N, B, cfg.seed, rank=info.rank, world_size=W)
        x0 = data.batch(idx, device)                                           # (B, C, H, W)
        u = ops.rand((B,), mix_seed(cfg.seed, step, 2), sample_offset=offset, device=device)
        t = (u * cfg.T).long().clamp_(max=cfg.T - 1)                          # (B,) in [0, T)
        kw = {} if K is None else {"y": _labels(data, idx, cfg, K, step, offset, device)}
        x_t, tgt = ops.q_sample(x0, t, table, seed=mix_seed(cfg.seed, step), sample_offset=offset,
                                return_target=target, backend=_q_backend(cfg.backend))
        # 2. forward in the autocast dtype, loss in float32
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None), _model_ops(cfg, device):
            pred = _prediction(fwd(x_t, t, **kw), tgt)
        per_sample = (pred.float() - tgt.float()).pow(2).flatten(1).mean(1)    # (B,)
        w = _loss_weight(t, table, target, cfg.min_snr_gamma)
        loss = (per_sample * w).mean() if w is not None else per_sample.mean()
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(net_params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        # 3. one host sync per step: is the loss finite (on every rank)?
        stat = torch.stack([loss.detach().float(), gnorm.detach().float().to(loss.device)])
        if info.enabled:
            torch.distributed.all_reduce(stat)
            stat /= W
        loss_val, gnorm_val = stat.tolist()
        bad = not math.isfinite(loss_val) or (scaler is None and not math.isfinite(gnorm_val))
        if bad:
            nonfinite_run += 1
            opt.zero_grad(set_to_none=True)
            warnings.warn(f"step {step}: non-finite loss ({loss_val}) or gradient norm ({gnorm_val}); "
                          f"step skipped ({nonfinite_run} in a row)", RuntimeWarning, stacklevel=2)
            if nonfinite_run >= cfg.max_nonfinite:
                raise FloatingPointError(
                    f"{nonfinite_run} non-finite losses in a row (last at step {step}); stopping. "
                    "Try a lower lr, grad_clip, or precision='fp32'. The last good checkpoint is "
                    f"{saved_path or 'not written yet'}.")
            losses.append(float("nan"))
        else:
            nonfinite_run = 0
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            # 4. EMA from the synchronised weights (identical on every rank after the DDP all-reduce)
            d = ema_decay_at(step, cfg.ema_decay)
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, net_params, 1.0 - d)
                for eb, nb in zip(ema_buffers, net_buffers):
                    eb.copy_(nb)
            losses.append(loss_val)
        step += 1
        imgs_done += B * W
        smooth = loss_val if smooth is None or not math.isfinite(smooth) else 0.98 * smooth + 0.02 * loss_val
        if bar is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            dt = time.perf_counter() - t_loop
            bar.set_postfix(loss=f"{smooth:.4f}", img_s=f"{imgs_done / max(dt, 1e-9):.0f}", refresh=False)
            bar.update(step - bar.n)
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            write_checkpoint()
        if cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
            _grid(ema, cfg, image_shape, schedule, info, device, step, K)
        if callback is not None:
            callback(step, {"loss": loss_val, "lr": lr_at(step - 1, cfg), "grad_norm": gnorm_val})
    if bar is not None:
        bar.close()
    train_time = time.perf_counter() - t_loop
    timings["train_s"] = train_time
    ips = imgs_done / train_time if imgs_done else 0.0
    if step > start_step or saved_path is None:
        write_checkpoint()
    saved_path = ckpt_file
    # final grid, loss curve, metric (rank 0 writes; every rank samples its slice)
    samples, labels, quality = None, None, None
    if cfg.sample_n > 0:
        t0 = time.perf_counter()
        samples, labels = _grid(ema, cfg, image_shape, schedule, info, device, step, K, final=True)
        timings["sample_s"] = time.perf_counter() - t0
    if info.is_main:
        if samples is not None and cfg.metric and _is_digits(cfg) and tuple(image_shape) == (1, 16, 16):
            t0 = time.perf_counter()
            from ..metrics import DigitsMetric
            metric = DigitsMetric(cache=os.path.join(out_dir, "digits_classifier.safetensors"))
            quality = metric.evaluate(samples, labels)
            timings["metric_s"] = time.perf_counter() - t0
            print(str(quality), file=sys.stderr)
    timings["total_s"] = time.perf_counter() - t_start
    return TrainResult(model=net, ema=ema, step=step, losses=losses, checkpoint=saved_path, config=cfg,
                       samples=samples, sample_labels=labels, quality=quality, images_per_second=ips,
                       timings=timings)


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":       # plain SGD: the update is lr * gradient, nothing else
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def _prediction(out, target: torch.Tensor) -> torch.Tensor:
    """The model's output as a tensor of the target's shape (diffusers' ``.sample`` and tuples
    unwrapped as sample() does): a (B, 2C, H, W) output against a (B, C, H, W) target would
    otherwise broadcast in the loss and train on nonsense."""
    from ..samplers.adapters import unwrap_output
    pred = unwrap_output(out)
    if pred.shape != target.shape:
        raise ValueError(f"the model returned shape {tuple(pred.shape)} for inputs of shape "
                         f"{tuple(target.shape)}; its output must have the input's shape (set "
                         "out_channels to the image channels)")
    return pred


def _model_ops(cfg: TrainConfig, device: torch.device):
    import contextlib
    name = cfg.model_backend or ("reference" if device.type == "cpu" else "auto")
    return ops.use_backend(name) if name != "auto" else contextlib.nullcontext()


def _q_backend(backend: Optional[str]) -> Optional[str]:
    return None if backend in (None, "auto") else backend


def _num_classes(cfg: TrainConfig, data: ImageData, ckpt) -> Optional[int]:
    """K for a conditional run (from the data's labels; a resumed run must see the same K)."""
    if not cfg.conditional:
        return None
    K = class_count(data.labels, data.name)
    if ckpt is not None and ckpt.extra.get("num_classes") != K:
        raise CheckpointError(f"{ckpt.path}: trained on {ckpt.extra.get('num_classes')} classes, the "
                              f"data {data.name!r} has {K}: resume with the checkpoint's data")
    return K


def _labels(data: ImageData, idx: torch.Tensor, cfg: TrainConfig, K: int, step: int, offset: int,
            device) -> torch.Tensor:
    """The batch's labels (int64 [B] on device), each dropped to the null class K with
    probability cfg.cond_drop_prob, keyed by (seed, step, global sample index)."""
    y = data.labels.index_select(0, idx).to(device)
    return drop_labels(y, cfg.cond_drop_prob, K, mix_seed(cfg.seed, step, 3), sample_offset=offset)


def _grid(ema, cfg: TrainConfig, image_shape, schedule, info: DistInfo, device, step: int,
          K: Optional[int] = None, final: bool = False):
    """Sample cfg.sample_n images from the EMA model (sharded over ranks), write the PNG grid.
    Conditional runs draw sample_n // K per class (at least 1), one row per class, guided with
    cfg.sample_guidance. Returns (images or None, labels or None)."""
    labels, guide, nrow, n = None, {}, None, cfg.sample_n
    if K is not None:
        nrow = max(1, cfg.sample_n // K)
        labels = class_rows(K, nrow)
        n = labels.shape[0]
        guide = dict(labels=labels, null_class=K, guidance=cfg.sample_guidance)
    x = sample_sharded(ema, n, image_shape, info, schedule=schedule, sampler=cfg.sampler,
                       steps=cfg.sample_steps if cfg.sampler == "ddim" else None, seed=cfg.seed,
                       prediction_type=TARGETS[cfg.prediction_type], backend=cfg.backend or "auto",
                       device=device, **guide)
    if info.is_main and x is not None:
        from ..utils.image import save_grid
        scale = max(1, 64 // max(image_shape[1:]))
        name = "samples.png" if final else f"samples_{step:07d}.png"
        save_grid(x, os.path.join(cfg.out_dir, name), nrow=nrow, scale=scale)
    return x, labels
