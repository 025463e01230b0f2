"""Few-step multistep solvers on the VP schedule: DPM-Solver++ (Lu et al. 2022, data prediction,
orders 1-3, midpoint/heun) and UniPC (Zhao et al. 2023, predict_x0, B(h) = bh1/bh2, with its
corrector), following diffusers' ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler``.

Every update of these solvers is linear in the current sample and the x0 predictions:
``x_next = c_x x + c_0 x0_i + sum_k c_k x0_{i-k}``, with x0_i = ``a x + b model_out``. The
coefficients depend only on the step, so they are computed here once on the host, in float64,
into a small table ``[steps, 8]`` (docs/ops_contract.md, ``multistep_update``): one fused op per
step then does the whole update (ops/reference.py and the fused backends).

How the table is built: the solver's formulas are evaluated on *linear forms*, float64 vectors
of coefficients over the basis ``[x_i, m_i, m_{i-1}, m_{i-2}, m_{i-3}, y_{i-1}]`` (m: x0
predictions; y_{i-1}: UniPC's corrected previous sample), so each formula is written once, as
the paper/diffusers states it, and its coefficients fall out.

UniPC's corrector rewrites the current sample from the previous one: y_i = C(y_{i-1}, m...).
The predictor of the step before gave x_i = P(y_{i-1}, m...) from the same y_{i-1} with the same
coefficient (both start from ``sigma_t / sigma_s0 * y_{i-1} - alpha_t h_phi_1 m_{i-1}``), so
y_i = x_i + (C - P): linear in x_i and the history. The loop therefore carries only x and the
last k x0 predictions, for both solvers.

History layout: a ring of K buffers (K = order - 1 for DPM-Solver++, order for UniPC); step i
writes its x0 into slot i mod K, and row i of the table holds each slot's coefficient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..ops.enums import MS_HISTORY, MS_MAX_HISTORY, MS_WIDTH, MS_X, MS_X0, MS_X0_M, MS_X0_X
from ..schedule import Col, NoiseSchedule

MULTISTEP_SAMPLERS = ("dpmsolver++", "unipc")
SOLVER_TYPES = {"dpmsolver++": ("midpoint", "heun"), "unipc": ("bh1", "bh2")}
FINAL_SIGMAS = ("zero", "sigma_min")
SPACINGS = ("linspace", "leading", "trailing")
MAX_ORDER = 3
MAX_HISTORY = MS_MAX_HISTORY

# columns of the per-step coefficient table (docs/ops_contract.md, multistep_update)
COEF_WIDTH = MS_WIDTH
C_X0_X, C_X0_M, C_X, C_X0, C_H = MS_X0_X, MS_X0_M, MS_X, MS_X0, MS_HISTORY

_X, _M0, _Y = 0, 1, 5          # basis of the linear forms: x_i, m_i .. m_{i-3}, y_{i-1}
_BASIS = 6


@dataclass(frozen=True)
class SolverConfig:
    """Everything that shapes a multistep trajectory (the cache key holds it)."""
    sampler: str                       # "dpmsolver++" | "unipc"
    order: int = 2
    solver_type: Optional[str] = None  # midpoint|heun (DPM), bh1|bh2 (UniPC); None: the default
    lower_order_final: bool = True
    euler_at_final: bool = False       # DPM-Solver++ only
    final_sigmas_type: str = "zero"
    karras: bool = False
    karras_round: bool = True          # diffusers rounds Karras timesteps (DPM: not for squaredcos)
    sigma_min: Optional[float] = None  # UniPC's Karras range (config sigma_min / sigma_max)
    sigma_max: Optional[float] = None
    lambda_min_clipped: float = -math.inf
    disable_corrector: tuple = ()      # UniPC: no corrector at step i when i - 1 is listed

    def solver(self) -> str:
        return self.solver_type or SOLVER_TYPES[self.sampler][0 if self.sampler == "dpmsolver++" else 1]

    def check(self) -> "SolverConfig":
        if self.sampler not in MULTISTEP_SAMPLERS:
            raise ValueError(f"sampler must be one of {MULTISTEP_SAMPLERS}, got {self.sampler!r}")
        if isinstance(self.order, bool) or not isinstance(self.order, int) or not 1 <= self.order <= MAX_ORDER:
            raise ValueError(f"solver_order must be 1, 2 or 3 for sampler={self.sampler!r}, got {self.order!r}")
        if self.solver() not in SOLVER_TYPES[self.sampler]:
            raise ValueError(f"solver_type for sampler={self.sampler!r} must be one of "
                             f"{SOLVER_TYPES[self.sampler]}, got {self.solver_type!r}")
        if self.final_sigmas_type not in FINAL_SIGMAS:
            raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS}, got {self.final_sigmas_type!r}")
        return self

    @property
    def history(self) -> int:
        """K, the x0 buffers the loop keeps."""
        return self.order - 1 if self.sampler == "dpmsolver++" else self.order


@dataclass(frozen=True)
class MultistepPlan:
    timesteps: tuple          # the model's timestep at each step (ints)
    sigmas: np.ndarray        # float64 [steps + 1], diffusers' sigma = sqrt((1 - ab) / ab)
    coefs: np.ndarray         # float64 [steps, COEF_WIDTH]
    history: int              # K


# --- timesteps and sigmas (diffusers' set_timesteps) -------------------------------------------

def base_sigmas(schedule: NoiseSchedule) -> np.ndarray:
    """sqrt((1 - ab) / ab) per training timestep, evaluated in float32 as diffusers does (its
    sigmas are float32), returned as float64."""
    ab = schedule.column(Col.ALPHA_BAR).to(torch.float32)
    return (((1 - ab) / ab) ** 0.5).to(torch.float64).numpy()


def _lambdas32(schedule: NoiseSchedule) -> torch.Tensor:
    ab = schedule.column(Col.ALPHA_BAR).to(torch.float32)
    return torch.log(torch.sqrt(ab)) - torch.log(torch.sqrt(1 - ab))


def spaced(T: int, steps: int, spacing: str, steps_offset: int, last: int) -> list[int]:
    """diffusers' multistep set_timesteps spacing (``last`` = T unless lambda_min_clipped)."""
    if spacing == "linspace":
        ts = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    elif spacing == "leading":
        ratio = last // (steps + 1)
        ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.arange(last, 0, -T / steps).round().astype(np.int64) - 1
    else:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    return [int(t) for t in ts]


def _karras(sig_desc: np.ndarray, n: int, lo: Optional[float], hi: Optional[float]) -> np.ndarray:
    """Karras et al. 2022 eq. 5, rho = 7, between sigma_max and sigma_min."""
    lo = float(sig_desc[-1]) if lo is None else lo
    hi = float(sig_desc[0]) if hi is None else hi
    ramp = np.linspace(0, 1, n)
    return (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7


def _sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """The fractional training timestep whose log-sigma interpolates to ``sigma``."""
    ls = np.log(max(sigma, 1e-10))
    above = np.cumsum(ls - log_sigmas >= 0)
    lo = int(min(np.argmax(above), log_sigmas.shape[0] - 2))
    w = float(np.clip((log_sigmas[lo] - ls) / (log_sigmas[lo] - log_sigmas[lo + 1]), 0, 1))
    return (1 - w) * lo + w * (lo + 1)


def timesteps_and_sigmas(schedule: NoiseSchedule, cfg: SolverConfig, steps: Optional[int],
                         timesteps: Optional[Sequence[int]], spacing: str, steps_offset: int
                         ) -> tuple[tuple, np.ndarray]:
    """(model timesteps, sigmas [n + 1]) as the diffusers scheduler's set_timesteps gives them."""
    T = schedule.T
    base = base_sigmas(schedule)
    if timesteps is not None:
        ts = [int(t) for t in timesteps]
        if not ts or any(b >= a for a, b in zip(ts, ts[1:])) or ts[0] >= T or ts[-1] < 0:
            raise ValueError(f"timesteps must be strictly decreasing ints in [0, {T}), got {ts}")
        if cfg.karras:
            raise ValueError("timesteps= cannot be combined with use_karras_sigmas=True (as in diffusers)")
    else:
        last = T
        if cfg.lambda_min_clipped != -math.inf:
            last = T - int(torch.searchsorted(torch.flip(_lambdas32(schedule), [0]),
                                              torch.tensor(cfg.lambda_min_clipped, dtype=torch.float32)))
        ts = spaced(T, steps, spacing, steps_offset, last)
        bad = [t for t in ts if not 0 <= t < T]
        if bad:
            raise ValueError(f"{spacing!r} spacing with {steps} steps over T={T} gives timesteps {ts} "
                             f"outside [0, {T}); choose another step count or spacing")
    if cfg.karras:
        log_sigmas = np.log(base)
        sig = _karras(base[::-1].copy(), len(ts), cfg.sigma_min, cfg.sigma_max)
        raw = [_sigma_to_t(s, log_sigmas) for s in sig]
        ts = [int(round(t)) if cfg.karras_round else int(t) for t in raw]
        last_sigma = (float(sig[-1]) if cfg.sampler == "unipc" else float(base[0]))
    else:
        sig = np.interp(np.asarray(ts, dtype=np.float64), np.arange(T), base)
        last_sigma = float(base[0])
    final = 0.0 if cfg.final_sigmas_type == "zero" else last_sigma
    sigmas = np.concatenate([sig, [final]]).astype(np.float32).astype(np.float64)
    return tuple(ts), sigmas


# --- the solvers on linear forms ---------------------------------------------------------------

def _e(k: int) -> np.ndarray:
    v = np.zeros(_BASIS)
    v[k] = 1.0
    return v


def _m(k: int) -> np.ndarray:
    """The form of m_{i-k}, the x0 prediction k steps back."""
    return _e(_M0 + k)


def _alpha_sigma_lambda(s: float) -> tuple[float, float, float]:
    alpha = 1.0 / math.sqrt(s * s + 1.0)
    sigma = s * alpha
    lam = (math.log(alpha) - math.log(sigma)) if sigma > 0 else math.inf
    return alpha, sigma, lam


def dpm_update(sig: np.ndarray, i: int, order: int, solver: str, sample: np.ndarray) -> np.ndarray:
    """DPM-Solver++ (data prediction) from sigma_i to sigma_{i+1}, multistep order 1-3."""
    a_t, s_t, l_t = _alpha_sigma_lambda(sig[i + 1])
    _, s_0, l_0 = _alpha_sigma_lambda(sig[i])
    h = l_t - l_0
    phi = math.expm1(-h)                    # e^{-h} - 1
    out = (s_t / s_0) * sample - a_t * phi * _m(0)
    if order == 1:
        return out
    l_1 = _alpha_sigma_lambda(sig[i - 1])[2]
    r0 = (l_0 - l_1) / h
    d1_0 = (_m(0) - _m(1)) / r0
    if order == 2:
        if solver == "midpoint":
            return out - 0.5 * a_t * phi * d1_0
        return out + a_t * (phi / h + 1.0) * d1_0
    l_2 = _alpha_sigma_lambda(sig[i - 2])[2]
    r1 = (l_1 - l_2) / h
    d1_1 = (_m(1) - _m(2)) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return out + a_t * (phi / h + 1.0) * d1 - a_t * ((phi + h) / h ** 2 - 0.5) * d2


def _unipc_rhs(h: float, order: int, rks: list, solver: str) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(h_phi_1, B(h), R, b) of UniPC's order conditions (predict_x0: hh = -h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if solver == "bh1" else math.expm1(hh)
    rk = np.array(rks + [1.0])
    R, b, fact = [], [], 1
    for k in range(1, order + 1):
        R.append(rk ** (k - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return h_phi_1, b_h, np.array(R), np.array(b)


def unipc_predict(sig: np.ndarray, j: int, order: int, solver: str, sample: np.ndarray,
                  m: list) -> np.ndarray:
    """UniP-``order`` from sigma_j to sigma_{j+1}; m[k] is the form of the x0 prediction of step j-k."""
    a_t, s_t, l_t = _alpha_sigma_lambda(sig[j + 1])
    _, s_0, l_0 = _alpha_sigma_lambda(sig[j])
    h = l_t - l_0
    rks, d1s = [], []
    for k in range(1, order):
        rk = (_alpha_sigma_lambda(sig[j - k])[2] - l_0) / h
        rks.append(rk)
        d1s.append((m[k] - m[0]) / rk)
    h_phi_1, b_h, R, b = _unipc_rhs(h, order, rks, solver)
    res = np.zeros(_BASIS)
    if d1s:
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        res = sum(r * d for r, d in zip(rhos, d1s))
    return (s_t / s_0) * sample - a_t * h_phi_1 * m[0] - a_t * b_h * res


def unipc_correct(sig: np.ndarray, i: int, order: int, solver: str, last: np.ndarray,
                  m_prev: list, m_now: np.ndarray) -> np.ndarray:
    """UniC-``order`` at step i: the sample at sigma_i recomputed from ``last`` (at sigma_{i-1})
    with the new x0 prediction ``m_now``; m_prev[k] is step (i-1-k)'s x0 prediction."""
    a_t, s_t, l_t = _alpha_sigma_lambda(sig[i])
    _, s_0, l_0 = _alpha_sigma_lambda(sig[i - 1])
    h = l_t - l_0
    rks, d1s = [], []
    for k in range(1, order):
        rk = (_alpha_sigma_lambda(sig[i - 1 - k])[2] - l_0) / h
        rks.append(rk)
        d1s.append((m_prev[k] - m_prev[0]) / rk)
    h_phi_1, b_h, R, b = _unipc_rhs(h, order, rks, solver)
    rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
    res = sum((r * d for r, d in zip(rhos[:-1], d1s)), np.zeros(_BASIS))
    res = res + rhos[-1] * (m_now - m_prev[0])
    return (s_t / s_0) * last - a_t * h_phi_1 * m_prev[0] - a_t * b_h * res


def dpm_orders(cfg: SolverConfig, n: int) -> list[int]:
    """DPMSolverMultistepScheduler.step's order at each step (warm-up and lower_order_final)."""
    orders = []
    for i in range(n):
        done = min(i, cfg.order)                   # lower_order_nums
        final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                                or cfg.final_sigmas_type == "zero")
        second = i == n - 2 and cfg.lower_order_final and n < 15
        if cfg.order == 1 or done < 1 or final:
            orders.append(1)
        elif cfg.order == 2 or done < 2 or second:
            orders.append(2)
        else:
            orders.append(3)
    return orders


def unipc_orders(cfg: SolverConfig, n: int) -> list[int]:
    """UniPCMultistepScheduler.step's predictor order at each step."""
    orders = []
    for i in range(n):
        o = min(cfg.order, n - i) if cfg.lower_order_final else cfg.order
        orders.append(min(o, min(i, cfg.order) + 1))
    return orders


def step_forms(cfg: SolverConfig, sigmas: np.ndarray) -> list[np.ndarray]:
    """x_{i+1} as a linear form over [x_i, m_i, m_{i-1}, m_{i-2}, m_{i-3}] for every step i."""
    n = len(sigmas) - 1
    solver = cfg.solver()
    forms = []
    if cfg.sampler == "dpmsolver++":
        for i, o in enumerate(dpm_orders(cfg, n)):
            forms.append(dpm_update(sigmas, i, o, solver, _e(_X)))
        return forms
    orders = unipc_orders(cfg, n)
    m_now = [_m(k) for k in range(4)]
    for i in range(n):
        sample = _e(_X)
        if i > 0 and (i - 1) not in cfg.disable_corrector:
            prev = [_m(k + 1) for k in range(3)]
            predicted = unipc_predict(sigmas, i - 1, orders[i - 1], solver, _e(_Y), prev)
            corrected = unipc_correct(sigmas, i, orders[i - 1], solver, _e(_Y), prev, _m(0))
            delta = corrected - predicted
            # both start from sigma_t/sigma_s0 * y_{i-1}: the same float64 product, so it cancels
            assert delta[_Y] == 0.0 or not np.isfinite(delta[_Y]), delta
            delta[_Y] = 0.0
            sample = sample + delta
        forms.append(unipc_predict(sigmas, i, orders[i], solver, sample, m_now))
    return forms


def conversion(prediction_type: str, sigma: float) -> tuple[float, float]:
    """(a, b) with x0 = a x + b model_out at this sigma (diffusers' convert_model_output)."""
    alpha, s, _ = _alpha_sigma_lambda(sigma)
    if prediction_type == "epsilon":
        return 1.0 / alpha, -s / alpha
    if prediction_type == "sample":
        return 0.0, 1.0
    if prediction_type == "v_prediction":
        return alpha, -s
    raise ValueError(f"prediction_type must be epsilon | sample | v_prediction, got {prediction_type!r}")


def coefficient_table(cfg: SolverConfig, sigmas: np.ndarray, prediction_type: str) -> np.ndarray:
    """The per-step table of ``multistep_update``: conversion, x, x0 and ring-slot coefficients."""
    forms = step_forms(cfg, sigmas)
    K = cfg.history
    table = np.zeros((len(forms), COEF_WIDTH))
    for i, f in enumerate(forms):
        if not np.all(np.isfinite(f)):
            raise ValueError(
                f"sampler={cfg.sampler!r} solver_type={cfg.solver()!r} order {cfg.order} is undefined at "
                f"step {i} of {len(forms)} with final_sigmas_type={cfg.final_sigmas_type!r} (a coefficient "
                "is not finite: diffusers' own step gives NaN there); use final_sigmas_type='sigma_min', "
                "lower_order_final=True or another solver_type")
        table[i, C_X0_X], table[i, C_X0_M] = conversion(prediction_type, sigmas[i])
        table[i, C_X], table[i, C_X0] = f[_X], f[_M0]
        for k in range(1, 4):
            c = f[_M0 + k]
            if c == 0.0:
                continue
            assert k <= K and i - k >= 0, (cfg, i, k, c)   # only predictions the ring still holds
            table[i, C_H + (i - k) % K] += c
    return table


def make_plan(schedule: NoiseSchedule, cfg: SolverConfig, prediction_type: str, steps: Optional[int],
              timesteps: Optional[Sequence[int]], spacing: str, steps_offset: int) -> MultistepPlan:
    cfg.check()
    if timesteps is None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1 for sampler={cfg.sampler!r}, got {steps!r}")
    ts, sigmas = timesteps_and_sigmas(schedule, cfg, steps, timesteps, spacing, steps_offset)
    same = [i for i in range(len(ts) - 1) if not sigmas[i + 1] < sigmas[i]]
    if same:
        # two steps at one noise level: h = 0, and every solver divides by it (diffusers: NaN)
        raise ValueError(
            f"{len(ts)} {spacing!r}-spaced steps over T={schedule.T} visit timestep(s) "
            f"{sorted({ts[i] for i in same})} twice ({list(ts)}): the solver's step size would be 0; "
            "use fewer steps or another timestep_spacing")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        coefs = coefficient_table(cfg, sigmas, prediction_type)
    return MultistepPlan(ts, sigmas, coefs, cfg.history)
