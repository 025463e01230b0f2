"""A diffusers ``DDPMScheduler`` / ``DDIMScheduler`` (or its config dict) read field by field
into ``sample()`` settings, so that sampling reproduces that scheduler's own loop
(DESIGN.md, "The drop-in contract"; docs/dropin.md has the field table).

Every config field is either honoured or refused by name: a field this module does not know
(another scheduler class, a newer diffusers) raises instead of sampling a different trajectory.
"""
from __future__ import annotations

from typing import Any, Optional

from ..schedule import NoiseSchedule, spaced_timesteps

# fields that shape the noise schedule itself (NoiseSchedule.from_diffusers reads them)
_SCHEDULE_FIELDS = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                    "trained_betas", "rescale_betas_zero_snr"}
_COMMON_FIELDS = _SCHEDULE_FIELDS | {
    "prediction_type", "clip_sample", "clip_sample_range", "thresholding",
    "dynamic_thresholding_ratio", "sample_max_value", "timestep_spacing", "steps_offset"}
FIELDS = {
    "DDIMScheduler": _COMMON_FIELDS | {"set_alpha_to_one"},
    "DDPMScheduler": _COMMON_FIELDS | {"variance_type"},
}
# bookkeeping keys diffusers keeps in a config; they change nothing
_META = {"_class_name", "_diffusers_version", "_use_default_values", "_name_or_path"}
SAMPLER_OF = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm"}
SPACINGS = ("leading", "trailing", "linspace")
# each class's __init__ defaults (diffusers 0.42), for a config dict that omits a field
_DEFAULTS = {"prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0,
             "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0,
             "timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True,
             "variance_type": "fixed_small"}


def is_diffusers_scheduler(obj: Any) -> bool:
    """A scheduler instance (``.config`` with ``num_train_timesteps``) or its config dict."""
    cfg = getattr(obj, "config", None)
    if cfg is not None and _get(cfg, "num_train_timesteps") is not None:
        return True
    return isinstance(obj, dict) and "num_train_timesteps" in obj


def scheduler_class(obj: Any, sampler: Optional[str]) -> str:
    """"DDIMScheduler" or "DDPMScheduler": the instance's class, a dict's ``_class_name``,
    else the class whose fields the dict has (or the explicitly chosen sampler)."""
    name = type(obj).__name__ if not isinstance(obj, dict) else obj.get("_class_name")
    if name is None:
        keys = set(obj)
        if "set_alpha_to_one" in keys and "variance_type" not in keys:
            name = "DDIMScheduler"
        elif "variance_type" in keys and "set_alpha_to_one" not in keys:
            name = "DDPMScheduler"
        elif sampler in ("ddpm", "ddim"):
            name = "DDPMScheduler" if sampler == "ddpm" else "DDIMScheduler"
        else:
            raise ValueError("a diffusers config dict without '_class_name': cannot tell a DDPM "
                             "from a DDIM scheduler; add '_class_name' or pass sampler='ddpm'|'ddim'")
    if name not in FIELDS:
        raise ValueError(
            f"schedule={name} is not supported: ddpm_fast.sample reproduces DDPMScheduler and "
            "DDIMScheduler loops only. To take just its betas and sample with ddpm_fast's own "
            "rules, pass schedule=NoiseSchedule.from_diffusers(scheduler)")
    return name


def read_scheduler(obj: Any, sampler: Optional[str], own_steps: bool = True) -> tuple[NoiseSchedule, dict]:
    """(schedule, settings) from a diffusers scheduler or config dict.

    ``sampler`` (the explicit choice, or None) picks which class's rules apply: DDIM settings
    for ``sampler="ddim"`` whatever the class, as ``DDIMScheduler.from_config(cfg)`` would.
    ``own_steps``: read the steps of an earlier ``set_timesteps`` (False when the caller chose)."""
    cls = scheduler_class(obj, sampler)
    cfg = getattr(obj, "config", obj)
    _refuse_unknown_fields(cfg, cls)
    schedule = NoiseSchedule.from_diffusers(obj)
    rules = sampler or SAMPLER_OF[cls]

    def get(field):
        value = _get(cfg, field)
        return _DEFAULTS[field] if value is None else value

    spacing = get("timestep_spacing")
    if spacing not in SPACINGS:
        raise ValueError(f"diffusers config field timestep_spacing={spacing!r} is not supported "
                         f"(one of {', '.join(SPACINGS)})")
    settings = {
        "sampler": rules,
        "prediction_type": get("prediction_type"),
        "clip_denoised": bool(get("clip_sample")),
        "clip_range": float(get("clip_sample_range")),
        "thresholding": bool(get("thresholding")),
        "dynamic_thresholding_ratio": float(get("dynamic_thresholding_ratio")),
        "sample_max_value": float(get("sample_max_value")),
        "timestep_spacing": spacing,
        "steps_offset": int(get("steps_offset")),
        # diffusers' DDIMScheduler.step default: eps stays the model's after x0 is clipped
        "use_clipped_model_output": False,
    }
    if rules == "ddim":
        settings["set_alpha_to_one"] = bool(get("set_alpha_to_one"))
        settings["prev_rule"] = "ratio"       # DDIMScheduler.step: t -> t - T // steps
    else:
        settings["variance_type"] = get("variance_type")
        settings["prev_rule"] = "next"        # DDPMScheduler.previous_timestep
    if own_steps:
        settings.update(_inference_steps(obj, rules, schedule.T, spacing, settings["steps_offset"]))
    return schedule, settings


def _inference_steps(obj: Any, rules: str, T: int, spacing: str, offset: int) -> dict:
    """A scheduler on which ``set_timesteps`` was called: the steps (or custom timesteps) it holds.

    Its timesteps must be the ones ``steps`` gives here; some diffusers versions get the
    trailing spacing wrong (T=120, 13 steps gives 14 timesteps ending at -1, which indexes
    ᾱ from the end), and such a list is refused rather than followed or silently replaced."""
    if isinstance(obj, dict):
        return {}
    held = [int(t) for t in getattr(obj, "timesteps", [])]
    if rules == "ddpm" and getattr(obj, "custom_timesteps", False):
        return {"timesteps": held}
    n = getattr(obj, "num_inference_steps", None)
    if not n:
        return {}
    ours = spaced_timesteps(T, int(n), spacing, offset)
    if held and held != ours:
        raise ValueError(
            f"the scheduler's own timesteps after set_timesteps({n}) are {held}, not {n} distinct "
            f"timesteps in [0, {T}) ({spacing!r} spacing, a diffusers rounding bug); pass "
            f"steps={n} to sample the corrected {ours}, or another step count")
    return {"steps": int(n)}


def _refuse_unknown_fields(cfg: Any, cls: str) -> None:
    keys = set(cfg.keys()) if hasattr(cfg, "keys") else set(vars(cfg))
    unknown = sorted(k for k in keys - _META - FIELDS[cls])
    if unknown:
        raise ValueError(f"{cls} config field(s) {', '.join(unknown)} not supported by "
                         "ddpm_fast.sample (sampling would not follow that scheduler); remove them "
                         "or use schedule=NoiseSchedule.from_diffusers(scheduler)")


def _get(cfg: Any, key: str):
    if isinstance(cfg, dict) or hasattr(cfg, "get"):
        return cfg.get(key)
    return getattr(cfg, key, None)
