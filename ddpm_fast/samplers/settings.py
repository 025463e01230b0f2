"""``sample()``'s sampler settings, resolved once: an explicit keyword argument wins, then the
foreign sampler's own config (a diffusers scheduler, samplers/diffusers_config.py; a lucidrains
GaussianDiffusion, samplers/lucidrains.py), then ddpm_fast's defaults below. docs/dropin.md
has the table. The result is a ``SamplerSpec`` (samplers/loop.py).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..noise import check_sample_offset
from ..ops.enums import MS_X0_M, MS_X0_X, VARIANCE_TYPES
from ..schedule import Col, NoiseSchedule, respaced_table
from . import diffusers_config, lucidrains
from .adapters import canonical_prediction
from .arguments import check_dtype, check_eta, check_model_dtype, check_schedule_table, resolve_backend
from .loop import SamplerSpec
from . import multistep
from .multistep import MULTISTEP_SAMPLERS, SolverConfig
from .plan import PREV_RULES, Plan, custom_plan, ddim_plan, ddpm_plan

# ddpm_fast's own rules, for a NoiseSchedule or a schedule name. They differ from diffusers'
# defaults in two places, both cleaner: DDIM lands on the next visited timestep, and ε is
# re-derived from the clipped x0, so x0 and ε stay one consistent pair (lucidrains' rule).
OWN_DEFAULTS = {
    "sampler": "ddpm", "steps": None, "timesteps": None, "eta": 0.0, "prediction_type": None,
    "variance_type": "fixed_small", "clip_denoised": True, "clip_range": 1.0,
    "use_clipped_model_output": True, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0, "timestep_spacing": "leading", "steps_offset": 0,
    "set_alpha_to_one": True, "prev_rule": "next",
    # multistep solvers (samplers/multistep.py); None: the sampler's diffusers default
    "solver_order": None, "solver_type": None, "lower_order_final": True, "euler_at_final": False,
    "final_sigmas_type": "zero", "use_karras_sigmas": False, "karras_round": True, "sigma_min": None,
    "sigma_max": None, "lambda_min_clipped": -float("inf"), "disable_corrector": (),
    "held_timesteps": None,
}
# What DPMSolverMultistepScheduler / UniPCMultistepScheduler default to where ddpm_fast's own
# DDPM/DDIM defaults differ: linspace spacing, no x0 clipping, order 2 (and 20 steps unless
# steps= or timesteps= is given).
MULTISTEP_DEFAULTS = {"timestep_spacing": "linspace", "clip_denoised": False, "solver_order": 2}
MULTISTEP_STEPS = 20
# settings that only a multistep sampler reads: asking for them with DDPM/DDIM is an error
_MULTISTEP_ONLY = ("solver_order", "solver_type", "final_sigmas_type", "use_karras_sigmas")

# diffusers' variance types -> the fused kernel's. The "_log" variants are the same σ computed
# through a log; diffusers' own fixed_large_log takes the square root of that log (NaN,
# diffusers #14569), so its intended σ = √β_t is used (docs/dropin.md).
_KERNEL_VARIANCE = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
                    "fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
                    # σ_table = √β_t > 0, the divisor of samplers/learned_variance.py
                    "learned": "fixed_large", "learned_range": "fixed_large"}
_LEARNED = ("learned", "learned_range")


def resolve_model(model: Any, schedule: Any, explicit: dict) -> tuple[Any, NoiseSchedule, dict]:
    """(network, schedule, settings). A lucidrains GaussianDiffusion given as the model brings
    its network, schedule and rules (samplers/lucidrains.py); any other model is itself."""
    if not lucidrains.looks_like_gaussian_diffusion(model):
        return (model, *resolve(schedule, explicit))
    if schedule is not None:
        raise ValueError("a GaussianDiffusion brings its own schedule: pass schedule=None "
                         "(or pass its network, diffusion.model, with your schedule)")
    net, schedule, foreign = lucidrains.read_gaussian_diffusion(model, explicit.get("steps"))
    return (net, *_merge(schedule, foreign, dict(explicit, steps=None)))


def resolve(schedule: Any, explicit: dict) -> tuple[NoiseSchedule, dict]:
    """(schedule, settings): explicit (non-None) arguments over the schedule's config over
    OWN_DEFAULTS."""
    foreign: dict = {}
    if schedule is None:
        schedule = NoiseSchedule.linear(1000)
    elif isinstance(schedule, str):
        schedule = NoiseSchedule.make(schedule, 1000)
    elif not isinstance(schedule, NoiseSchedule):
        if not diffusers_config.is_diffusers_scheduler(schedule):
            raise TypeError(f"schedule must be a NoiseSchedule, a name or a diffusers scheduler, "
                            f"got {type(schedule).__name__}")
        # the steps of the scheduler's own set_timesteps() give way to an explicit choice
        chosen = explicit.get("steps") is not None or explicit.get("timesteps") is not None
        schedule, foreign = diffusers_config.read_scheduler(schedule, explicit.get("sampler"),
                                                            own_steps=not chosen)
    return _merge(schedule, foreign, explicit)


def _merge(schedule: NoiseSchedule, foreign: dict, explicit: dict) -> tuple[NoiseSchedule, dict]:
    settings = dict(OWN_DEFAULTS)
    sampler = explicit.get("sampler") or foreign.get("sampler") or OWN_DEFAULTS["sampler"]
    if sampler in MULTISTEP_SAMPLERS:
        settings.update(MULTISTEP_DEFAULTS)
    else:
        asked = [k for k in _MULTISTEP_ONLY if explicit.get(k) is not None]
        if asked:
            raise ValueError(f"{', '.join(asked)} apply to sampler='dpmsolver++' or 'unipc' only, "
                             f"not sampler={sampler!r}")
    settings.update(foreign)
    settings.update({k: v for k, v in explicit.items() if v is not None})
    settings["prediction_type"] = _prediction(schedule, explicit.get("prediction_type"),
                                              foreign.get("prediction_type"))
    return schedule, settings


def _prediction(schedule: NoiseSchedule, asked: Optional[str], foreign: Optional[str]) -> str:
    asked = canonical_prediction(asked)
    hint = canonical_prediction(foreign or schedule.prediction_type)
    if asked and hint and asked != hint:
        raise ValueError(f"prediction_type={asked!r} conflicts with the schedule's {hint!r}")
    pred = asked or hint or "epsilon"
    check_schedule_table(schedule)
    if pred == "epsilon" and schedule.zero_terminal_snr:
        raise ValueError("a zero-terminal-SNR schedule has alpha_bar_T = 0, where x0 cannot be "
                         "recovered from epsilon (division by zero); train and sample with "
                         "prediction_type='v_prediction'")
    return pred


def make_spec(schedule: NoiseSchedule, s: dict, shape: tuple, device: torch.device,
              dtype: torch.dtype, sample_offset: int, backend: Optional[str],
              check_nan: bool, guidance=None, model_dtype: Optional[torch.dtype] = None) -> SamplerSpec:
    """The SamplerSpec of resolved settings ``s``, every value checked. ``model_dtype``: the
    model forward's autocast dtype (``check_model_dtype``); the state stays in ``dtype``."""
    spec = _make_spec(schedule, s, shape, device, dtype, sample_offset, backend, check_nan, guidance)
    spec.model_dtype = check_model_dtype(model_dtype, device)
    return spec


def _make_spec(schedule: NoiseSchedule, s: dict, shape: tuple, device: torch.device,
               dtype: torch.dtype, sample_offset: int, backend: Optional[str],
               check_nan: bool, guidance=None) -> SamplerSpec:
    sampler = s["sampler"]
    if sampler == "ddim":
        s["eta"] = check_eta(s["eta"])
    dtype = check_dtype(dtype)
    if sampler in MULTISTEP_SAMPLERS:
        return _multistep_spec(schedule, s, shape, device, dtype, sample_offset, backend, check_nan, guidance)
    plan = _plan(schedule.T, s)
    table = schedule.table(device)
    if sampler == "ddpm" and plan.timesteps != tuple(range(schedule.T - 1, -1, -1)):
        table = respaced_table(schedule.table("cpu"), plan.timesteps, plan.prev).to(device)
    _check_values(s, dtype, sample_offset)
    check_sample_offset(sample_offset, int(shape[0]))  # the noise layout's range (docs/ops_contract.md)
    final = 1.0 if s["set_alpha_to_one"] else float(schedule.column(Col.ALPHA_BAR)[0])
    threshold = ((float(s["dynamic_thresholding_ratio"]), float(s["sample_max_value"]))
                 if s["thresholding"] else None)
    spec = SamplerSpec(shape=shape, device=device, dtype=dtype, table=table, plan=plan,
                       sampler=sampler, prediction_type=s["prediction_type"],
                       variance_type=_KERNEL_VARIANCE[s["variance_type"]],
                       clip_denoised=bool(s["clip_denoised"]), clip_range=float(s["clip_range"]),
                       eta=float(s["eta"]), final_alpha_bar=final, sample_offset=sample_offset,
                       backend=resolve_backend(backend), check_nan=check_nan, threshold=threshold,
                       rederive_eps=bool(s["use_clipped_model_output"]),
                       learned_variance=s["variance_type"] if s["variance_type"] in _LEARNED else None,
                       guidance=guidance)
    return spec.resolve()


def solver_config(s: dict) -> SolverConfig:
    """The multistep solver of resolved settings ``s``, checked (samplers/multistep.py)."""
    order = s["solver_order"]
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"solver_order must be an int (1, 2 or 3), got {type(order).__name__} {order!r}")
    for name in ("lower_order_final", "euler_at_final", "use_karras_sigmas"):
        if not isinstance(s[name], bool):
            raise TypeError(f"{name} must be a bool, got {type(s[name]).__name__} {s[name]!r}")
    return SolverConfig(
        s["sampler"], order, s["solver_type"], lower_order_final=s["lower_order_final"],
        euler_at_final=s["euler_at_final"], final_sigmas_type=s["final_sigmas_type"],
        karras=s["use_karras_sigmas"], karras_round=bool(s["karras_round"]), sigma_min=s["sigma_min"],
        sigma_max=s["sigma_max"], lambda_min_clipped=float(s["lambda_min_clipped"]),
        disable_corrector=tuple(int(i) for i in s["disable_corrector"])).check()


def _multistep_spec(schedule: NoiseSchedule, s: dict, shape: tuple, device: torch.device,
                    dtype: torch.dtype, sample_offset: int, backend: Optional[str],
                    check_nan: bool, guidance=None) -> SamplerSpec:
    """The spec of a DPM-Solver++ / UniPC run: its timesteps and per-step coefficient table."""
    if s["eta"]:
        raise ValueError(f"eta applies to sampler='ddim' only, not sampler={s['sampler']!r} "
                         "(the multistep solvers are deterministic)")
    if s["variance_type"] in _LEARNED:
        raise ValueError(f"variance_type={s['variance_type']!r} (a 2C-channel model) is not supported by "
                         f"sampler={s['sampler']!r}")
    cfg = solver_config(s)
    steps, timesteps = s["steps"], s["timesteps"]
    if timesteps is not None and steps is not None:
        raise ValueError("pass steps or timesteps, not both")
    if timesteps is None and steps is None:
        steps = MULTISTEP_STEPS
    if s["timestep_spacing"] not in multistep.SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {multistep.SPACINGS}, got {s['timestep_spacing']!r}")
    mp = multistep.make_plan(schedule, cfg, s["prediction_type"], steps, timesteps,
                             s["timestep_spacing"], int(s["steps_offset"]))
    held = s["held_timesteps"]
    if held is not None and list(held) != list(mp.timesteps):
        raise ValueError(f"the scheduler's own timesteps after set_timesteps are {list(held)}, but its "
                         f"config gives {list(mp.timesteps)}; pass steps= or timesteps= explicitly")
    _check_values(s, dtype, sample_offset)
    check_sample_offset(sample_offset, int(shape[0]))
    threshold = ((float(s["dynamic_thresholding_ratio"]), float(s["sample_max_value"]))
                 if s["thresholding"] else None)
    ts = tuple(mp.timesteps)
    coefs = torch.tensor(mp.coefs, dtype=torch.float64)
    coefs_x0 = coefs.clone()
    coefs_x0[:, MS_X0_X], coefs_x0[:, MS_X0_M] = 0.0, 1.0
    spec = SamplerSpec(shape=shape, device=device, dtype=dtype, table=schedule.table(device),
                       plan=Plan(ts, ts[1:] + (-1,)), sampler=s["sampler"],
                       prediction_type=s["prediction_type"], variance_type="fixed_small",
                       clip_denoised=bool(s["clip_denoised"]), clip_range=float(s["clip_range"]),
                       eta=0.0, final_alpha_bar=1.0, sample_offset=sample_offset,
                       backend=resolve_backend(backend), check_nan=check_nan, threshold=threshold,
                       solver=cfg, solver_table=coefs.to(device), solver_table_x0=coefs_x0.to(device),
                       history=mp.history, guidance=guidance)
    return spec.resolve()


def _plan(T: int, s: dict):
    sampler, steps, timesteps = s["sampler"], s["steps"], s["timesteps"]
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"sampler must be one of 'ddpm', 'ddim', 'dpmsolver++', 'unipc', got {sampler!r}")
    if s["prev_rule"] not in PREV_RULES:
        raise ValueError(f"prev_rule must be one of {PREV_RULES}, got {s['prev_rule']!r}")
    if timesteps is not None:
        if steps is not None:
            raise ValueError("pass steps or timesteps, not both")
        return custom_plan(T, timesteps)
    if sampler == "ddpm":
        if s["eta"]:
            raise ValueError("eta applies to sampler='ddim' only")
        if steps is None:
            return ddpm_plan(T)
        # DDPMScheduler.set_timesteps(steps): spaced timesteps, each landing on the next one
        return ddim_plan(T, steps, s["timestep_spacing"], s["steps_offset"], "next")
    return ddim_plan(T, T if steps is None else steps, s["timestep_spacing"], s["steps_offset"],
                     s["prev_rule"])


def _check_values(s: dict, dtype: torch.dtype, sample_offset: Any) -> None:
    var = s["variance_type"]
    if var not in _KERNEL_VARIANCE:
        raise ValueError(f"variance_type must be one of {sorted(_KERNEL_VARIANCE)}, got {var!r}")
    assert set(_KERNEL_VARIANCE.values()) <= set(VARIANCE_TYPES)
    if not isinstance(sample_offset, int) or sample_offset < 0:
        raise ValueError(f"sample_offset must be an int >= 0, got {sample_offset!r}")
    if not s["clip_range"] > 0:
        raise ValueError(f"clip_range must be > 0, got {s['clip_range']}")
    if s["thresholding"]:
        if not 0 < s["dynamic_thresholding_ratio"] <= 1:
            raise ValueError("dynamic_thresholding_ratio must be in (0, 1], got "
                             f"{s['dynamic_thresholding_ratio']}")
        if not s["sample_max_value"] >= 1:
            raise ValueError(f"sample_max_value must be >= 1, got {s['sample_max_value']}")
