"""The sampling loop, written once against the ops interface (docs/ops_contract.md).

Everything the loop needs is resolved up front into a ``SamplerSpec``; the loop itself only
calls the model and one fused step per timestep. Timesteps live in a device tensor indexed by
the step number, the seed is a device tensor, noise comes from the counter-based stream: the
loop never synchronises with the host (a non-finite model output is recorded on the device, by
the fused step kernel itself, and reported once at the end).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..noise import STREAM_INIT
from ..ops import implementation
from ..ops.enums import MS_X0_M, MS_X0_X, PREDICTION_TYPES, VARIANCE_TYPES
from .guidance import Guidance, check_halves_differ, combine
from .plan import Plan
from .learned_variance import kernel_noise, split_output
from .stepper import make_step_
from .x0_rules import X0Rule, dynamic_threshold, pre_step


@dataclass
class SamplerSpec:
    """Static description of one sampling run (what a compiled/captured sampler is keyed by)."""
    shape: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype                 # dtype of the sampler state x_t (float32 by default)
    table: torch.Tensor                # float64 [T, 16] on device
    plan: Plan
    sampler: str                       # "ddpm" | "ddim"
    prediction_type: str
    variance_type: str
    clip_denoised: bool
    clip_range: float
    eta: float
    final_alpha_bar: float
    sample_offset: int
    backend: Optional[str]
    check_nan: bool = True
    threshold: Optional[tuple[float, float]] = None   # dynamic thresholding (ratio, max value)
    rederive_eps: bool = True          # DDIM: ε from the clipped x0, or the model's (diffusers)
    learned_variance: Optional[str] = None   # "learned" | "learned_range": 2C-channel model output
    guidance: Optional[Guidance] = None      # classifier-free guidance: model output [2B, ...]
    # multistep solvers (samplers/multistep.py): the solver, its float64 [steps, 8] coefficient
    # table on the device, and K, the number of x0 predictions the loop keeps
    solver: Optional[Any] = None
    solver_table: Optional[torch.Tensor] = None
    solver_table_x0: Optional[torch.Tensor] = None   # the same for an x0 input (a = 0, b = 1)
    history: int = 0
    model_dtype: Optional[torch.dtype] = None   # the model runs under autocast to it (None: off)
    impls: dict = field(default_factory=dict)

    def resolve(self) -> "SamplerSpec":
        """Look the op implementations up once (the loop calls them directly)."""
        ops = ["philox_normal", self.step_op]
        self.impls = {op: implementation(op, self.backend, self.device) for op in ops}
        return self

    @property
    def step_op(self) -> str:
        """The fused op of one step."""
        if self.multistep:
            return "multistep_update"
        return "reverse_step" if self.sampler == "ddpm" else "ddim_step"

    @property
    def multistep(self) -> bool:
        return self.solver_table is not None

    def new_history(self) -> Optional[torch.Tensor]:
        """The multistep solver's x0 ring ``[K, *shape]`` (zeros: an unused slot's weight is 0,
        and 0 * garbage could be NaN), or None for DDPM/DDIM."""
        if not self.multistep:
            return None
        return torch.zeros((self.history, *self.shape), dtype=self.dtype, device=self.device)

    @property
    def x0_rule(self) -> X0Rule:
        return X0Rule(self.clip_denoised, self.clip_range, self.threshold, self.rederive_eps)

    @property
    def needs_pre_step(self) -> bool:
        """True when x0 needs work the fused step does not do (samplers/x0_rules.py)."""
        return self.x0_rule.needs_pre_step(self.sampler)

    @property
    def guided(self) -> bool:
        return self.guidance is not None

    @property
    def fused_guidance(self) -> Optional[float]:
        """The guidance scale the step kernel combines with (model_out [2B, ...]), or None: no
        guidance, or a pre-step that needs the combined output first (combined_output)."""
        g = self.guidance
        if g is None or g.rescale or self.learned_variance is not None or self.needs_pre_step:
            return None
        if self.multistep and (self.threshold is not None or self.clip_denoised):
            return None   # multistep_x0 thresholds the combined output's x0 before the update
        return g.scale

    def combined_output(self, model_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The guided model output [B, ...] from the model's [2B, ...], in plain PyTorch
        (samplers/guidance.py); a learned-variance model's variance channels are the
        conditional half's (as diffusers' DiT pipeline keeps them)."""
        g, cd = self.guidance, torch.float64 if x.dtype == torch.float64 else torch.float32
        if self.learned_variance is None:
            return combine(model_out, g.scale, g.rescale, cd)
        C, B = x.shape[1], x.shape[0]
        mean = combine(model_out[:, :C], g.scale, g.rescale, cd)
        return torch.cat([mean, model_out[:B, C:].to(cd)], dim=1)

    @property
    def pred_code(self) -> int:
        return PREDICTION_TYPES[self.prediction_type]

    def initial_noise(self, seed: torch.Tensor) -> torch.Tensor:
        """x_T from Philox stream 0, counted by global sample index: chunk/shard invariant."""
        B = self.shape[0]
        numel = 1
        for s in self.shape[1:]:
            numel *= s
        t0 = torch.zeros((), dtype=torch.int64, device=self.device)
        z = self.impls["philox_normal"](seed, t0, B, numel, self.sample_offset, STREAM_INIT)
        # contiguous: the loops write this state buffer in place, and a compiled step is
        # specialised on its strides (the reference generator pads rows to whole counters)
        return z.reshape(self.shape).to(self.dtype).contiguous()

    def step(self, x: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
             seed: torch.Tensor, i: Optional[torch.Tensor] = None,
             history: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One fused step x_t -> x_prev (the backend's kernel; t, t_prev are device tensors),
        after the x0 pre-step when the spec's rules need one. A multistep solver also takes the
        step number ``i`` (int64 [1] device tensor) and its x0 ring ``history``, updated in place."""
        w = self.fused_guidance
        if self.guided and w is None:
            model_out = self.combined_output(model_out, x)
        if self.multistep:
            return self._multistep(x, model_out, i, history)
        pred, clip, noise = self.pred_code, self.clip_denoised, None
        if self.learned_variance is not None:
            model_out, v = split_output(model_out, x.shape[1])
            if self.sampler == "ddpm":   # DDIM uses the mean half only
                noise = kernel_noise(self.learned_variance, v, x, t, self.table, seed, self.sample_offset)
        if self.needs_pre_step:
            x, model_out, pred = pre_step(self.x0_rule, self.sampler, x, model_out, t, self.table, pred)
            clip = False
        if self.sampler == "ddpm":
            seed_or_none = seed if noise is None else None   # the op takes noise or a seed
            return self.impls["reverse_step"](
                x, model_out, t, self.table, noise, seed_or_none, self.sample_offset, pred,
                VARIANCE_TYPES[self.variance_type], clip, self.clip_range, w)
        return self.impls["ddim_step"](
            x, model_out, t, t_prev, self.table, None, seed, self.sample_offset, self.eta,
            pred, clip, self.clip_range, self.final_alpha_bar, w)


    def _multistep(self, x, model_out, i, history):
        """x_{i+1} from the fused multistep update; step i's x0 goes into ring slot i mod K
        (the slot of the oldest prediction, which this step was the last to read)."""
        table = self.solver_table
        if self.threshold is not None or self.clip_denoised:
            # x0 needs a per-sample quantile (or a clamp): computed here from the table's own
            # conversion coefficients, then handed to the update as an x0 prediction
            model_out = multistep_x0(x, model_out, table, i, self.x0_rule)
            table = self.solver_table_x0
        x_next, x0 = self.impls["multistep_update"](x, model_out, history, table, i, self.fused_guidance)
        if self.history:
            history.index_copy_(0, torch.remainder(i.reshape(1), self.history), x0.unsqueeze(0))
        return x_next


def multistep_x0(x, model_out, table, i, rule: X0Rule) -> torch.Tensor:
    """x0 = a x + b model_out at step i, thresholded (Imagen, diffusers' rule) or clipped."""
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    row = table.index_select(0, i.reshape(-1).long()).reshape(-1).to(cd)
    x0 = row[MS_X0_X] * x.to(cd) + row[MS_X0_M] * model_out.to(cd)
    if rule.threshold is not None:
        x0 = dynamic_threshold(x0, *rule.threshold)
    elif rule.clip:
        x0 = x0.clamp(-rule.clip_range, rule.clip_range)
    return x0.to(x.dtype)


def nonfinite_error(t: int) -> FloatingPointError:
    """The error for a model output with NaN/inf first seen at timestep ``t`` (every loop)."""
    return FloatingPointError(
        f"the model output was not finite (NaN/inf) at timestep {t}; the samples are invalid "
        "(check the model's dtype/weights, or pass check_nan=False to skip this check)")


def raise_if_bad(bad: Optional[torch.Tensor]) -> None:
    """After the loop: the NaN record's one host read (None: check_nan=False, nothing read)."""
    if bad is not None:
        t = int(bad.reshape(()))   # the loop's one host sync, after the last step
        if t >= 0:
            raise nonfinite_error(t)


def step_rows(spec: SamplerSpec) -> tuple[list, list, list]:
    """Per step i, built once before the loop: t [B], and t_prev [B] for DDIM (int64 device rows
    of one contiguous table, so a step does no indexing or expand), and the step number [1] for
    a multistep solver; a list the step does not read holds None."""
    n, B = len(spec.plan), spec.shape[0]
    ts, prevs = spec.plan.device_tensors(spec.device)

    def rows(v: torch.Tensor) -> list:
        return list(v[:, None].expand(n, B).contiguous().unbind(0))
    none = [None] * n
    numbers = torch.arange(n, dtype=torch.int64, device=spec.device).reshape(n, 1)
    return (rows(ts), rows(prevs) if spec.sampler == "ddim" and not spec.multistep else none,
            list(numbers.unbind(0)) if spec.multistep else none)


def check_first_output(spec: SamplerSpec, model_out: torch.Tensor, x: torch.Tensor, call: Callable) -> None:
    """The model output's shape and dtype (and with guidance, that the halves differ where the
    kwargs do: one host read), on the first step only: later steps run the same model."""
    from .adapters import check_output
    check_output(model_out, x, spec.learned_variance is not None, spec.guided)
    if spec.guided:
        check_halves_differ(model_out, getattr(call, "kwargs", None))


def run_eager(spec: SamplerSpec, call: Callable, x: torch.Tensor, seed: torch.Tensor,
              progress: bool = False, intermediate_every: int = 0):
    """The T-step loop in eager mode on the state buffer ``x`` (the sampler's own, contiguous: every
    step writes it in place). Returns (x0, intermediates). Everything that does not change per
    step is resolved here once (the step op and its constant arguments: samplers/stepper.py; the
    timestep rows), so a step is the model call and one fused op."""
    ts, prevs, numbers = step_rows(spec)
    step_ = make_step_(spec)
    history = spec.new_history()
    bad = torch.full((1,), -1, dtype=torch.int64, device=spec.device) if spec.check_nan else None
    intermediates = []
    steps = range(len(spec.plan))
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"{spec.sampler} sampling", unit="step")
    for i in steps:
        t = ts[i]
        model_out = call(x, t)
        if i == 0:
            check_first_output(spec, model_out, x, call)
        step_(x, model_out, t, prevs[i], seed, numbers[i], bad, history)   # x and bad in place
        if intermediate_every and (i + 1) % intermediate_every == 0:
            intermediates.append(x.clone())
    raise_if_bad(bad)
    return x, intermediates
