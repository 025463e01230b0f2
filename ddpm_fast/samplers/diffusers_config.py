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
_MULTISTEP_COMMON = (_COMMON_FIELDS - {"clip_sample", "clip_sample_range"}) | {
    "solver_order", "solver_type", "lower_order_final", "use_karras_sigmas", "use_exponential_sigmas",
    "use_beta_sigmas", "use_flow_sigmas", "flow_shift", "final_sigmas_type", "use_dynamic_shifting",
    "time_shift_type"}
FIELDS = {
    "DDIMScheduler": _COMMON_FIELDS | {"set_alpha_to_one"},
    "DDPMScheduler": _COMMON_FIELDS | {"variance_type"},
    "DPMSolverMultistepScheduler": _MULTISTEP_COMMON | {
        "algorithm_type", "euler_at_final", "use_lu_lambdas", "lambda_min_clipped", "variance_type"},
    "UniPCMultistepScheduler": _MULTISTEP_COMMON | {
        "predict_x0", "disable_corrector", "solver_p", "sigma_min", "sigma_max", "shift_terminal"},
}
MULTISTEP_CLASSES = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
# a multistep config field -> the only value(s) we follow (anything else changes the trajectory
# in a way the fused solver does not reproduce: refused by name)
_MULTISTEP_ONLY_VALUES = {
    "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,), "use_flow_sigmas": (False,),
    "use_lu_lambdas": (False,), "use_dynamic_shifting": (False,), "rescale_betas_zero_snr": (False,),
    "variance_type": (None,), "algorithm_type": ("dpmsolver++", "deis"), "predict_x0": (True,),
    "solver_p": (None,), "shift_terminal": (None,),
}
# diffusers' own renames in the two classes' __init__ (an unknown-to-the-class solver_type)
_SOLVER_RENAMES = {"DPMSolverMultistepScheduler": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
                   "UniPCMultistepScheduler": {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}}
# bookkeeping keys diffusers keeps in a config; they change nothing
_META = {"_class_name", "_diffusers_version", "_use_default_values", "_name_or_path"}
SAMPLER_OF = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm",
              "DPMSolverMultistepScheduler": "dpmsolver++", "UniPCMultistepScheduler": "unipc"}
SPACINGS = ("leading", "trailing", "linspace")
# each class's __init__ defaults (diffusers 0.42), for a config dict that omits a field
_DEFAULTS = {"prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0,
             "thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0,
             "timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True,
             "variance_type": "fixed_small"}
_MULTISTEP_DEFAULTS = {"prediction_type": "epsilon", "thresholding": False, "dynamic_thresholding_ratio": 0.995,
                       "sample_max_value": 1.0, "timestep_spacing": "linspace", "steps_offset": 0,
                       "solver_order": 2, "lower_order_final": True, "use_karras_sigmas": False,
                       "final_sigmas_type": "zero", "euler_at_final": False, "lambda_min_clipped": -float("inf"),
                       "disable_corrector": [], "sigma_min": None, "sigma_max": None, "algorithm_type": "dpmsolver++",
                       "predict_x0": True, "beta_schedule": "linear"}


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
        if "algorithm_type" in keys or "euler_at_final" in keys:
            name = "DPMSolverMultistepScheduler"
        elif "predict_x0" in keys or "disable_corrector" in keys:
            name = "UniPCMultistepScheduler"
        elif "set_alpha_to_one" in keys and "variance_type" not in keys:
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
            f"schedule={name} is not supported: ddpm_fast.sample reproduces DDPMScheduler, "
            "DDIMScheduler, DPMSolverMultistepScheduler and UniPCMultistepScheduler loops only. To take just its betas and sample with ddpm_fast's own "
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
    if cls in MULTISTEP_CLASSES:
        return _read_multistep(obj, cfg, cls, sampler, own_steps)
    if sampler is not None and sampler not in ("ddpm", "ddim"):
        raise ValueError(f"sampler={sampler!r} with schedule={cls}: pass a {sampler} scheduler "
                         "(DPMSolverMultistepScheduler / UniPCMultistepScheduler), or "
                         "schedule=NoiseSchedule.from_diffusers(scheduler) for its betas only")
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


def _read_multistep(obj: Any, cfg: Any, cls: str, sampler: Optional[str],
                    own_steps: bool) -> tuple[NoiseSchedule, dict]:
    """(schedule, settings) of a DPMSolverMultistepScheduler / UniPCMultistepScheduler."""
    rules = SAMPLER_OF[cls]
    if sampler is not None and sampler != rules:
        raise ValueError(f"sampler={sampler!r} conflicts with schedule={cls} (sampler {rules!r}); "
                         "pass sampler=None, or that sampler's own scheduler class")

    def get(field):
        value = _get(cfg, field)
        return _MULTISTEP_DEFAULTS.get(field) if value is None else value

    for field, allowed in _MULTISTEP_ONLY_VALUES.items():
        if field in FIELDS[cls] and get(field) not in allowed:
            raise ValueError(f"{cls} config field {field}={get(field)!r} is not supported by "
                             f"ddpm_fast.sample (supported: {', '.join(repr(a) for a in allowed)})")
    if get("prediction_type") not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"{cls} config field prediction_type={get('prediction_type')!r} is not supported "
                         "(epsilon, sample, v_prediction)")
    spacing = get("timestep_spacing")
    if spacing not in SPACINGS:
        raise ValueError(f"diffusers config field timestep_spacing={spacing!r} is not supported "
                         f"(one of {', '.join(SPACINGS)})")
    solver_type = get("solver_type") or ("midpoint" if rules == "dpmsolver++" else "bh2")
    solver_type = _SOLVER_RENAMES[cls].get(solver_type, solver_type)
    schedule = NoiseSchedule.from_diffusers(obj)
    settings = {
        "sampler": rules,
        "prediction_type": get("prediction_type"),
        "clip_denoised": False,
        "thresholding": bool(get("thresholding")),
        "dynamic_thresholding_ratio": float(get("dynamic_thresholding_ratio")),
        "sample_max_value": float(get("sample_max_value")),
        "timestep_spacing": spacing,
        "steps_offset": int(get("steps_offset")),
        "solver_order": get("solver_order"),
        "solver_type": solver_type,
        "lower_order_final": bool(get("lower_order_final")),
        "final_sigmas_type": get("final_sigmas_type"),
        "use_karras_sigmas": bool(get("use_karras_sigmas")),
        # DPMSolverMultistepScheduler keeps fractional Karras timesteps for squaredcos_cap_v2
        # (then truncated to int64); everything else rounds
        "karras_round": rules == "unipc" or get("beta_schedule") != "squaredcos_cap_v2",
    }
    if rules == "dpmsolver++":
        settings["euler_at_final"] = bool(get("euler_at_final"))
        settings["lambda_min_clipped"] = float(get("lambda_min_clipped"))
    else:
        settings["disable_corrector"] = tuple(int(i) for i in get("disable_corrector"))
        settings["sigma_min"] = None if get("sigma_min") is None else float(get("sigma_min"))
        settings["sigma_max"] = None if get("sigma_max") is None else float(get("sigma_max"))
    n = getattr(obj, "num_inference_steps", None) if own_steps and not isinstance(obj, dict) else None
    if n:
        settings["steps"] = int(n)
        settings["held_timesteps"] = tuple(int(t) for t in getattr(obj, "timesteps", []))
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
