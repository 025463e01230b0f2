"""The rules a :class:`~ddpm_fast.training.TrainConfig` must satisfy, checked in one pass when the
config is made, so that a bad value fails before the first training step (not after 100 steps,
or after training when the final sample grid is drawn).

Each rule names its field; :class:`ConfigError` carries the field so the CLI can print the
option (``--min-snr-gamma``) instead of the attribute.
"""
from __future__ import annotations

import math

__all__ = ["ConfigError", "validate_config", "MODELS", "TARGETS"]

MODELS = ("tiny", "ddpm_cifar10", "unet", "custom")
# accepted spellings of the training target -> the canonical name
TARGETS = {"epsilon": "epsilon", "eps": "epsilon", "sample": "sample", "x0": "sample",
           "v_prediction": "v_prediction", "v": "v_prediction"}
_CHOICES = {"lr_schedule": ("constant", "cosine"), "precision": ("auto", "fp32", "bf16", "fp16"),
            "sampler": ("ddpm", "ddim"), "optimizer": ("adamw", "sgd"), "model": MODELS,
            "prediction_type": tuple(TARGETS)}
_MIN_INT = {"steps": 0, "batch_size": 1, "T": 2, "max_nonfinite": 1, "seed": 0, "warmup_steps": 0,
            "log_every": 1, "ckpt_every": 0, "sample_every": 0, "sample_n": 0, "sample_steps": 1}
_OPTIONAL_MIN_INT = {"resolution": 1, "threads": 1}
_BOOLS = ("compile", "metric", "progress", "conditional")


class ConfigError(ValueError):
    """A training option with a bad value. ``field`` is the option's name in TrainConfig."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_ints(c) -> None:
    for name, lo in _MIN_INT.items():
        v = getattr(c, name)
        if not _is_int(v) or v < lo:
            raise ConfigError(name, f"must be an int >= {lo}, got {v!r}")
    if c.seed >= 2 ** 64:
        raise ConfigError("seed", f"must be < 2**64, got {c.seed}")
    for name, lo in _OPTIONAL_MIN_INT.items():
        v = getattr(c, name)
        if v is not None and (not _is_int(v) or v < lo):
            raise ConfigError(name, f"must be None (the default) or an int >= {lo}, got {v!r}")
    if c.channels not in (None, 1, 3) or isinstance(c.channels, bool):
        raise ConfigError("channels", f"must be 1 (greyscale), 3 (RGB) or None (detect), got {c.channels!r}")


def _check_floats(c) -> None:
    def number(name, ok, rule):
        v = getattr(c, name)
        if not _is_number(v) or math.isnan(v) or not ok(v):
            raise ConfigError(name, f"must be {rule}, got {v!r}")

    number("lr", lambda v: 0 < v < math.inf, "a finite number > 0")
    number("min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]")
    number("weight_decay", lambda v: 0 <= v < math.inf, "a finite number >= 0")
    number("grad_clip", lambda v: v >= 0, "a max gradient norm > 0, or 0 to turn clipping off")
    number("ema_decay", lambda v: 0 <= v <= 1, "in [0, 1] (0: no averaging, e.g. 0.999)")
    number("cond_drop_prob", lambda v: 0 <= v <= 1,
           "in [0, 1]: the probability that a label is replaced by the null class (e.g. 0.1)")
    number("sample_guidance", lambda v: 0 <= v < math.inf,
           "a finite number >= 0 (1: the conditional model alone, 0: the unconditional one)")
    if c.min_snr_gamma is not None:
        number("min_snr_gamma", lambda v: 0 < v < math.inf,
               "a finite number > 0 (e.g. 5.0), or None to turn the min-SNR weighting off")
    b = c.betas
    if (not isinstance(b, (tuple, list)) or len(b) != 2
            or not all(_is_number(x) and 0 <= x < 1 for x in b)):
        raise ConfigError("betas", f"must be two numbers in [0, 1) (AdamW's, e.g. (0.9, 0.999)), got {b!r}")


def _check_strings(c) -> None:
    for name, choices in _CHOICES.items():
        v = getattr(c, name)
        if v not in choices or not isinstance(v, str):
            raise ConfigError(name, f"must be one of {' | '.join(choices)}, got {v!r}")
    for name in ("data", "out_dir"):
        v = getattr(c, name)
        if not isinstance(v, str) or not v:
            raise ConfigError(name, f"must be a non-empty string, got {v!r}")
    for name in _BOOLS:
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(name, f"must be True or False, got {getattr(c, name)!r}")
    if not isinstance(c.model_kwargs, dict) or not all(isinstance(k, str) for k in c.model_kwargs):
        raise ConfigError("model_kwargs", f"must be a dict of UNet arguments (e.g. {{'ch': 16}}), "
                                          f"got {c.model_kwargs!r}")
    if "num_classes" in c.model_kwargs:
        raise ConfigError("model_kwargs", "num_classes comes from the data's labels: train with "
                                          "conditional=True (--conditional) instead")


def _check_devices(c) -> None:
    import torch
    from ..ops.dispatch import BACKENDS
    if c.device is not None:
        try:
            torch.device(c.device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError("device", f"not a device ({e}); use e.g. 'cpu', 'cuda', 'cuda:1'") from None
    for name in ("backend", "model_backend"):
        v = getattr(c, name)
        if v is not None and v != "auto" and v not in BACKENDS:
            raise ConfigError(name, f"must be auto, None or one of {' | '.join(BACKENDS)}, got {v!r}")


def _check_schedule(c) -> None:
    from ..schedule import NoiseSchedule
    try:
        NoiseSchedule.make(c.schedule, c.T)
    except (ValueError, TypeError) as e:
        raise ConfigError("schedule", str(e)) from None


def _check_cross_fields(c) -> None:
    if c.sampler == "ddim" and c.sample_n > 0 and c.sample_steps > c.T:
        raise ConfigError("sample_steps", f"{c.sample_steps} DDIM steps for the sample grids is more "
                                          f"than T={c.T}: lower sample_steps (or sample_n=0)")
    if c.precision == "fp16" and c.device is not None and not str(c.device).startswith("cuda"):
        raise ConfigError("precision", f"fp16 autocast needs a CUDA device (device={c.device!r}); "
                                       "use bf16 or fp32")


def validate_config(c) -> None:
    """Raise :class:`ConfigError` naming the first field of ``c`` that breaks a rule."""
    _check_strings(c)
    _check_ints(c)
    _check_floats(c)
    _check_devices(c)
    _check_schedule(c)
    _check_cross_fields(c)
