"""Noise schedules: beta schedules, timestep spacing, and the one coefficient table kernels read.

Every coefficient is computed once in float64 and stored as ONE tensor ``[T, 16]`` (see
``Col``) so that a kernel reads all it needs for timestep ``t`` from one row on the device,
indexed by a device timestep: no host sync, no per-call ``.to(device)`` of many small tensors.
"""
from __future__ import annotations

import math
from enum import IntEnum
from typing import Mapping, Optional, Sequence

import torch

__all__ = ["Col", "NoiseSchedule", "TABLE_WIDTH", "respaced_table", "spaced_timesteps"]

TABLE_WIDTH = 16  # 16 float64 = one 128-byte row per timestep


class Col(IntEnum):
    """Column of the schedule table. Mirrored in csrc/include/ddpm_fast/schedule_columns.h."""

    BETA = 0
    ALPHA = 1
    ALPHA_BAR = 2
    ALPHA_BAR_PREV = 3
    SQRT_ALPHA_BAR = 4
    SQRT_ONE_MINUS_ALPHA_BAR = 5
    SQRT_RECIP_ALPHA_BAR = 6
    SQRT_RECIPM1_ALPHA_BAR = 7
    POSTERIOR_VARIANCE = 8
    POSTERIOR_LOG_VARIANCE_CLIPPED = 9
    POSTERIOR_MEAN_COEF1 = 10
    POSTERIOR_MEAN_COEF2 = 11
    SIGMA_SMALL = 12
    SIGMA_LARGE = 13


# --- beta schedules (float64) -------------------------------------------------------------

def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020: betas evenly spaced from 1e-4 to 0.02 (scaled for T != 1000 by the caller)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_betas(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Latent-diffusion schedule: sqrt(beta) evenly spaced."""
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2


def _betas_from_alpha_bar(alpha_bar_fn, T: int, max_beta: float) -> torch.Tensor:
    t = torch.arange(T + 1, dtype=torch.float64) / T
    ab = alpha_bar_fn(t)
    return (1 - ab[1:] / ab[:-1]).clamp(0.0, max_beta)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17 (diffusers' "squaredcos_cap_v2")."""
    return _betas_from_alpha_bar(lambda t: torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2, T, max_beta)


def sigmoid_betas(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                  max_beta: float = 0.999) -> torch.Tensor:
    """Jabri et al. 2022 sigmoid schedule (lucidrains' GaussianDiffusion default)."""
    v_start = torch.tensor(start / tau, dtype=torch.float64).sigmoid()
    v_end = torch.tensor(end / tau, dtype=torch.float64).sigmoid()

    def alpha_bar(t):
        return (-((t * (end - start) + start) / tau).sigmoid() + v_end) / (v_end - v_start)

    return _betas_from_alpha_bar(alpha_bar, T, max_beta)


def diffusers_sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """diffusers' beta_schedule="sigmoid": betas on a sigmoid between beta_start and beta_end."""
    return torch.linspace(-6, 6, T, dtype=torch.float64).sigmoid() * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift/scale sqrt(alpha_bar) so that alpha_bar_T = 0."""
    ab_sqrt = torch.cumprod(1 - betas, 0).sqrt()
    first, last = ab_sqrt[0].clone(), ab_sqrt[-1].clone()
    ab_sqrt = (ab_sqrt - last) * first / (first - last)
    ab = ab_sqrt ** 2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


_SCHEDULES = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
    "diffusers_sigmoid": diffusers_sigmoid_betas,
}

# diffusers' beta_schedule names -> ours
_DIFFUSERS_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear",
                    "squaredcos_cap_v2": "cosine", "sigmoid": "diffusers_sigmoid"}


def _table_from_pairs(betas: torch.Tensor, ab: torch.Tensor, ab_prev: torch.Tensor,
                      log_var: torch.Tensor) -> torch.Tensor:
    """Every coefficient of the jumps ᾱ_prev -> ᾱ = ᾱ_prev (1 - β), one row each (see Col), float64.

    β is the jump's own beta: the DDPM β_t for the full chain, 1 - ᾱ_t/ᾱ_prev for a respaced
    one (Nichol & Dhariwal 2021, section 4). ``log_var`` is the log posterior variance, whose
    rule for a zero variance differs per chain."""
    alphas = 1 - betas
    one_minus_ab = 1 - ab
    post_var = betas * (1 - ab_prev) / one_minus_ab
    table = torch.zeros(ab.numel(), TABLE_WIDTH, dtype=torch.float64)
    table[:, Col.BETA] = betas
    table[:, Col.ALPHA] = alphas
    table[:, Col.ALPHA_BAR] = ab
    table[:, Col.ALPHA_BAR_PREV] = ab_prev
    table[:, Col.SQRT_ALPHA_BAR] = ab.sqrt()
    table[:, Col.SQRT_ONE_MINUS_ALPHA_BAR] = one_minus_ab.sqrt()
    table[:, Col.SQRT_RECIP_ALPHA_BAR] = 1 / ab.sqrt()  # inf where alpha_bar = 0 (ZT-SNR)
    table[:, Col.SQRT_RECIPM1_ALPHA_BAR] = (1 / ab - 1).sqrt()
    table[:, Col.POSTERIOR_VARIANCE] = post_var
    table[:, Col.POSTERIOR_LOG_VARIANCE_CLIPPED] = log_var
    table[:, Col.POSTERIOR_MEAN_COEF1] = betas * ab_prev.sqrt() / one_minus_ab
    table[:, Col.POSTERIOR_MEAN_COEF2] = (1 - ab_prev) * alphas.sqrt() / one_minus_ab
    table[:, Col.SIGMA_SMALL] = post_var.sqrt()
    table[:, Col.SIGMA_LARGE] = betas.sqrt()
    return table


def _table_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """Every derived coefficient, float64, one row per timestep (see Col)."""
    with torch.no_grad():
        ab = torch.cumprod(1 - betas, 0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        post_var = betas * (1 - ab_prev) / (1 - ab)
        # log(0) at t=0: use the value at t=1 (improved-diffusion's clipping; diffusers PR #3006)
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        return _table_from_pairs(betas, ab, ab_prev, post_logvar)


def respaced_table(table: torch.Tensor, timesteps: Sequence[int], prev: Sequence[int]) -> torch.Tensor:
    """A copy of a schedule table whose row t holds the coefficients of the jump t -> prev(t).

    The DDPM kernel reads row t of the table for the step at t; giving it this table makes it
    take the respaced step of diffusers' ``DDPMScheduler.set_timesteps(n)`` (or a custom list):
    ᾱ_prev is the ᾱ of the next visited timestep (1 after the last), the step's beta is
    1 - ᾱ_t/ᾱ_prev, and the posterior mean and variances follow from that pair. A jump that ends
    the chain has zero posterior variance; its log is taken at 1e-20 as diffusers clamps it
    (the step at t = 0 adds no noise, whatever the table says). Rows not visited are unchanged."""
    rows = torch.as_tensor(list(timesteps), dtype=torch.int64)
    to = torch.as_tensor(list(prev), dtype=torch.int64)
    ab_all = table[:, Col.ALPHA_BAR]
    ab = ab_all[rows]
    ab_prev = torch.where(to >= 0, ab_all[to.clamp(min=0)], torch.ones_like(ab))
    betas = 1 - ab / ab_prev
    post_var = betas * (1 - ab_prev) / (1 - ab)
    out = table.clone()
    out[rows] = _table_from_pairs(betas, ab, ab_prev, post_var.clamp(min=1e-20).log())
    return out


class NoiseSchedule:
    """A DDPM noise schedule: betas and every derived coefficient as one float64 table.

    Build with a named constructor (``NoiseSchedule.linear(1000)``, ``.cosine``, ``.sigmoid``,
    ``.scaled_linear``), from explicit betas, or from a diffusers scheduler
    (``NoiseSchedule.from_diffusers(DDPMScheduler(...))``).

    ``prediction_type`` is an optional hint carried with the schedule (diffusers configs and
    lucidrains' GaussianDiffusion state it); ``ddpm_fast.sample`` refuses a conflicting choice.
    """

    def __init__(self, betas: torch.Tensor | Sequence[float], *, name: str = "custom",
                 prediction_type: Optional[str] = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().clone()
        if betas.numel() < 2:
            raise ValueError(f"a schedule needs at least 2 timesteps, got {betas.numel()}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
            raise ValueError("betas must be finite and in (0, 1]")
        self.betas = betas
        self.name = name
        self.prediction_type = prediction_type
        self._table = _table_from_betas(betas)
        self._device_tables: dict = {}

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def make(cls, kind: str, T: int = 1000, *, zero_terminal_snr: bool = False,
             prediction_type: Optional[str] = None, **kwargs) -> "NoiseSchedule":
        """``kind`` in linear | scaled_linear | cosine | sigmoid | diffusers_sigmoid."""
        if kind not in _SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; choose from {sorted(_SCHEDULES)}")
        if not isinstance(T, int) or T < 2:
            raise ValueError(f"T must be an int >= 2, got {T!r}")
        betas = _SCHEDULES[kind](T, **kwargs)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        name = kind + ("+ztsnr" if zero_terminal_snr else "")
        return cls(betas, name=name, prediction_type=prediction_type)

    @classmethod
    def linear(cls, T: int = 1000, **kw) -> "NoiseSchedule":
        return cls.make("linear", T, **kw)

    @classmethod
    def scaled_linear(cls, T: int = 1000, **kw) -> "NoiseSchedule":
        return cls.make("scaled_linear", T, **kw)

    @classmethod
    def cosine(cls, T: int = 1000, **kw) -> "NoiseSchedule":
        return cls.make("cosine", T, **kw)

    @classmethod
    def sigmoid(cls, T: int = 1000, **kw) -> "NoiseSchedule":
        return cls.make("sigmoid", T, **kw)

    @classmethod
    def from_diffusers(cls, scheduler) -> "NoiseSchedule":
        """Same schedule as a diffusers ``DDPMScheduler``/``DDIMScheduler`` (or its config dict).

        From a scheduler instance its ``alphas_cumprod`` are taken as they are (bit-compatible
        with diffusers' loop); from a config the betas are recomputed in float64. The config's
        prediction_type is kept as the schedule's hint."""
        if not isinstance(getattr(scheduler, "config", scheduler), Mapping):
            raise TypeError(
                f"from_diffusers needs a diffusers scheduler or its config (a mapping), got "
                f"{type(scheduler).__name__} {scheduler!r:.60}; for a schedule by name use "
                "NoiseSchedule.make(...) or from_diffusers({'beta_schedule': ...})")
        cfg = getattr(scheduler, "config", scheduler)
        get = cfg.get
        T = int(get("num_train_timesteps", 1000))
        pred = get("prediction_type", "epsilon")
        trained = get("trained_betas", None)
        if trained is not None:
            betas = torch.as_tensor(trained, dtype=torch.float64)
            name = "trained"
        else:
            kind = get("beta_schedule", "linear")
            if kind not in _DIFFUSERS_NAMES:
                raise ValueError(f"diffusers beta_schedule {kind!r} is not supported")
            ours = _DIFFUSERS_NAMES[kind]
            kw = {} if ours == "cosine" else {"beta_start": float(get("beta_start", 1e-4)),
                                               "beta_end": float(get("beta_end", 0.02))}
            betas = _SCHEDULES[ours](T, **kw)
            name = ours
        if get("rescale_betas_zero_snr", False):
            betas = rescale_zero_terminal_snr(betas)
            name += "+ztsnr"
        ab = getattr(scheduler, "alphas_cumprod", None)
        if isinstance(ab, torch.Tensor) and ab.numel() == T and bool((ab > 0).all()):
            # A scheduler instance: adopt its own (float32) alpha_bar, the values the model was
            # trained with, and derive everything else from them in float64. Recomputing in
            # float64 instead differs by up to 1e-4 relative at small t, where diffusers' float32
            # 1 - alpha_bar cancels.
            ab = ab.to(torch.float64)
            betas = 1 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return cls(betas, name=name, prediction_type=pred)

    # -- properties -------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return self.betas.numel()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._table[:, Col.ALPHA_BAR]

    @property
    def zero_terminal_snr(self) -> bool:
        """True when alpha_bar at t = T-1 is 0: x0 cannot be recovered from epsilon there."""
        return bool(self._table[-1, Col.ALPHA_BAR] == 0)

    def column(self, col: Col) -> torch.Tensor:
        """One float64 column ``[T]`` on the CPU."""
        return self._table[:, col]

    def table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The float64 ``[T, 16]`` table on ``device``, copied there once and cached."""
        device = torch.device(device)
        if device.type == "cpu":
            return self._table
        key = str(device)
        if key not in self._device_tables:
            self._device_tables[key] = self._table.to(device)
        return self._device_tables[key]

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name}, T={self.T})"


def spaced_timesteps(T: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> list[int]:
    """``steps`` strictly decreasing timesteps in [0, T) for a respaced (DDIM) sampler.

    spacing follows diffusers (Table 2 of Lin et al. 2023): "leading" = multiples of T//steps
    (ends at 0 + steps_offset), "trailing" = from T-1 down in steps of T/steps,
    "linspace" = rounded linspace(0, T-1, steps).
    """
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in [1, {T}], got {steps!r}")
    if spacing == "leading":
        ratio = T // steps
        ts = [i * ratio + steps_offset for i in range(steps)]
    elif spacing == "trailing":
        ratio = T / steps
        ts = [int(round(T - i * ratio)) - 1 for i in range(steps)][::-1]
    elif spacing == "linspace":
        step = (T - 1) / (steps - 1) if steps > 1 else 0.0
        ts = [int(round(i * step)) for i in range(steps)]  # i*step, as numpy's linspace computes it
    else:
        raise ValueError(f"timestep spacing must be leading | trailing | linspace, got {spacing!r}")
    ts = sorted(set(ts), reverse=True)
    if len(ts) != steps or ts[0] >= T or ts[-1] < 0:
        raise ValueError(f"spacing {spacing!r} with steps={steps}, offset={steps_offset} does not "
                         f"give {steps} distinct timesteps in [0, {T})")
    return ts
