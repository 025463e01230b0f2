"""A lucidrains ``denoising_diffusion_pytorch.GaussianDiffusion`` handed to ``sample()`` as the
model: its network, schedule and sampling rules, so that sampling reproduces its own
``ddim_sample`` (``sampling_timesteps < timesteps``) or ``p_sample_loop`` (DESIGN.md, "The
drop-in contract"; docs/dropin.md).

What GaussianDiffusion's samplers do, and how it is reproduced:
- the network is ``diffusion.model(x, t, x_self_cond)``; called here as ``model(x, t)``
  (self-conditioning is refused: it feeds x0 back into the network, which we do not);
- the schedule is its float32 ``alphas_cumprod`` buffer (every coefficient then in float64);
- ``objective`` pred_noise / pred_x0 / pred_v -> prediction type epsilon / sample / v_prediction;
- ``ddim_sample`` visits ``int(linspace(-1, T-1, S+1))`` reversed and steps to the next value
  (the last step, to -1, returns the clipped x0: a DDIM step with final ᾱ = 1), with
  ``ddim_sampling_eta``, x0 clipped to [-1, 1] and ε re-derived from the clipped x0 for every
  objective (its ``rederive_pred_noise``);
- ``p_sample_loop`` is the full DDPM chain, x0 clipped, σ² = β̃ (its clipped log variance).
- Output: GaussianDiffusion.sample un-normalises to [0, 1] (``auto_normalize``); ddpm_fast
  returns the model's own [-1, 1] range — apply ``(x + 1) / 2`` to get its images.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..schedule import NoiseSchedule

OBJECTIVES = {"pred_noise": "epsilon", "pred_x0": "sample", "pred_v": "v_prediction"}
_NEEDED = ("model", "objective", "alphas_cumprod", "num_timesteps", "sampling_timesteps",
           "ddim_sampling_eta", "self_condition")


def looks_like_gaussian_diffusion(obj: Any) -> bool:
    """A wrapper holding a network in ``.model`` with its own objective and betas."""
    return hasattr(obj, "objective") and hasattr(obj, "model") and hasattr(obj, "betas")


def ddim_times(T: int, steps: int) -> list[int]:
    """GaussianDiffusion.ddim_sample's visited timesteps (its -1 end excluded): the same float32
    linspace truncated by ``int``, so the same integers."""
    times = torch.linspace(-1, T - 1, steps=steps + 1).int().tolist()
    return [t for t in reversed(times) if t >= 0]


def read_gaussian_diffusion(diffusion: Any, steps: Optional[int]) -> tuple[Any, NoiseSchedule, dict]:
    """(network, schedule, settings) of a GaussianDiffusion. ``steps`` (explicit, or None for its
    ``sampling_timesteps``) respaces as its ddim_sample would."""
    name = type(diffusion).__name__
    missing = [a for a in _NEEDED if not hasattr(diffusion, a)]
    if name != "GaussianDiffusion" or missing:
        what = f"lacks {', '.join(missing)}" if missing else "samples differently"
        raise TypeError(
            f"got a {name} ({what}): only lucidrains' GaussianDiffusion is reproduced. Pass its "
            "network and state its prediction type and schedule, e.g. sample(diffusion.model, ..., "
            "prediction_type='v_prediction', schedule=NoiseSchedule(diffusion.betas))")
    if diffusion.self_condition:
        raise ValueError("GaussianDiffusion with self_condition=True is not supported by "
                         "ddpm_fast.sample (the network's third input, the previous x0, is not fed)")
    objective = diffusion.objective
    if objective not in OBJECTIVES:
        raise ValueError(f"GaussianDiffusion objective={objective!r} is not supported "
                         f"(one of {', '.join(OBJECTIVES)})")
    ab = diffusion.alphas_cumprod.detach().to("cpu", torch.float64)
    betas = 1 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    schedule = NoiseSchedule(betas, name="lucidrains", prediction_type=OBJECTIVES[objective])
    T = int(diffusion.num_timesteps)
    S = int(steps if steps is not None else diffusion.sampling_timesteps)
    settings = {"prediction_type": OBJECTIVES[objective], "clip_denoised": True, "clip_range": 1.0,
                "use_clipped_model_output": True, "set_alpha_to_one": True, "thresholding": False,
                "variance_type": "fixed_small", "prev_rule": "next"}
    if S < T:
        settings.update(sampler="ddim", eta=float(diffusion.ddim_sampling_eta),
                        timesteps=ddim_times(T, S))
    else:
        settings["sampler"] = "ddpm"
    return diffusion.model, schedule, settings
