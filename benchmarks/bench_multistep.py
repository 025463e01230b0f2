"""The fused multistep update (DPM-Solver++ / UniPC, one op per step) vs diffusers' own
``DPMSolverMultistepScheduler.step`` / ``UniPCMultistepScheduler.step``, same process, same inputs.

    pytest benchmarks/bench_multistep.py --benchmark-only      # ratios printed at the end

Both sides are driven through the same first steps with the same model outputs, so the timed step
(the fifth of 10, full order, UniPC with its corrector) starts from the same state; the results are
checked against each other before timing. Ours is the sampler's step as the loop runs it: the
fused update plus the write of x0 into the preallocated history ring. Medians of interleaved runs
(robust on a shared machine), float32, all intra-op threads.
"""
from __future__ import annotations

import time

import pytest
import torch

from benchmarks.timing import interleaved_ms
from ddpm_fast.ops import dispatch
from ddpm_fast.samplers.settings import make_spec, resolve
from ddpm_fast.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

SHAPES = [(256, 3, 32, 32), (16, 4, 64, 64)]
SOLVERS = [("DPMSolverMultistepScheduler", 2, "midpoint"), ("DPMSolverMultistepScheduler", 3, "heun"),
           ("UniPCMultistepScheduler", 3, "bh2")]
WARM = 5


def _backends(device):
    return [b for b in ("cpp", "triton", "cuda") if dispatch.unavailable_reason(b, device.type) is None]


def _setup(cls_name, order, solver_type, shape, backend, device):
    sch = getattr(diffusers, cls_name)(solver_order=order, solver_type=solver_type)
    sch.set_timesteps(10)
    _, s = resolve(sch, {})
    spec = make_spec(NoiseSchedule.from_diffusers(sch), s, shape, device, torch.float32, 0, backend, True)
    g = torch.Generator(device=device).manual_seed(0)
    ms = [torch.randn(shape, generator=g, device=device) for _ in range(WARM + 1)]
    x = torch.randn(shape, generator=g, device=device)
    history = spec.new_history()
    for i in range(WARM):
        t = sch.timesteps[i]
        spec.step(x, ms[i], None, None, None, torch.tensor([i], device=device), history)
        x = sch.step(ms[i], t, x).prev_sample
    step = torch.tensor([WARM], device=device)
    t = sch.timesteps[WARM]
    state = (sch._step_index, list(sch.model_outputs), getattr(sch, "last_sample", None),
             sch.lower_order_nums, getattr(sch, "this_order", None))
    saved_history = history.clone()

    def restore():
        sch._step_index, outs, last, sch.lower_order_nums, order_ = state
        sch.model_outputs = list(outs)
        if last is not None:
            sch.last_sample, sch.this_order = last, order_
        history.copy_(saved_history)

    ours = lambda: spec.step(x, ms[WARM], None, None, None, step, history)   # noqa: E731
    theirs = lambda: sch.step(ms[WARM], t, x).prev_sample                   # noqa: E731
    return ours, theirs, restore


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: f"{s[0][:5]}-{s[1]}-{s[2]}")
def test_fused_multistep_update_vs_diffusers_step(benchmark, speedup_report, solver, shape):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = _backends(device)
    if not backends:
        pytest.skip("no fused backend here")
    backend = "cuda" if "cuda" in backends else "cpp" if "cpp" in backends else backends[0]
    ours, theirs, restore = _setup(*solver, shape, backend, device)
    restore()
    a = ours()
    restore()
    b = theirs()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))  # the same step
    rounds = 20 if device.type == "cuda" else 5
    ours_ms, theirs_ms = interleaved_ms([ours, theirs], device, rounds, before=restore, warmup=False)
    benchmark.pedantic(ours, setup=restore, rounds=rounds, warmup_rounds=1, iterations=1)
    ratio = theirs_ms / ours_ms
    benchmark.extra_info.update(backend=backend, shape=list(shape), solver=list(solver), ours_ms=round(ours_ms, 3),
                                diffusers_ms=round(theirs_ms, 3), speedup_vs_diffusers=round(ratio, 2),
                                threads=torch.get_num_threads(), torch=torch.__version__,
                                time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    speedup_report(f"{backend:<6} {solver[0][:5]} order {solver[1]} {solver[2]:<8} {'x'.join(map(str, shape)):>12}: "
                   f"fused step {ours_ms:8.2f} ms, diffusers step {theirs_ms:8.2f} ms, speedup {ratio:5.1f}x")
