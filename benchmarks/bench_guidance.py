"""Classifier-free guidance: the combine fused into the step vs the diffusers-style Python combine.

    pytest benchmarks/bench_guidance.py --benchmark-only      # ratios printed at the end

Per step, given the model's [2B, ...] output (conditional rows first):
- fused: one ``reverse_step`` / ``ddim_step`` with ``guidance_scale`` (reads each half once);
- python: ``m_c, m_u = out.chunk(2); m = m_u + w * (m_c - m_u)`` (what diffusers' pipelines
  run) then the same backend's unguided step — the combine is two extra element-wise kernels
  and a [B, ...] temporary;
- diffusers: the same Python combine, then ``DDPMScheduler.step`` / ``DDIMScheduler.step``.
Same process, same inputs, medians of interleaved runs (robust to a shared, loaded machine);
the ratios are stored in ``extra_info`` with the load average. CPU: the "cpp" backend; on a GPU
the "cuda" backend as well.
"""
from __future__ import annotations

import os
import platform

import pytest
import torch

from benchmarks.timing import interleaved_ms, sync
from ddpm_fast.ops import dispatch
from ddpm_fast.schedule import NoiseSchedule

SHAPES = [(64, 3, 32, 32), (16, 4, 64, 64)]
W = 3.0


def _backends():
    out = []
    for backend, dev in (("cpp", "cpu"), ("cuda", "cuda")):
        why = dispatch.unavailable_reason(backend, dev)
        out.append(pytest.param(backend, dev, id=backend,
                                marks=pytest.mark.skipif(why is not None, reason=f"{backend}: {why}")))
    return out


def _cases(sampler: str, backend: str, shape, device):
    """(fused, python combine + our step, python combine + diffusers' step) for one step."""
    diffusers = pytest.importorskip("diffusers")
    B = shape[0]
    sched = NoiseSchedule.linear(1000)
    table = sched.table(device)
    x = torch.randn(shape, device=device)
    out = torch.randn((2 * B, *shape[1:]), device=device)
    t = torch.full((B,), 500, device=device)
    seed = torch.tensor(7, device=device)

    def combine():
        m_c, m_u = out.chunk(2)
        return m_u + W * (m_c - m_u)
    if sampler == "ddpm":
        step = dispatch.implementation("reverse_step", backend, device)
        fused = lambda: step(x, out, t, table, None, seed, 0, 0, 0, True, 1.0, W)         # noqa: E731
        python = lambda: step(x, combine(), t, table, None, seed, 0, 0, 0, True, 1.0, None)  # noqa: E731
        ds = diffusers.DDPMScheduler(num_train_timesteps=1000)
        ds.set_timesteps(1000)
        theirs = lambda: ds.step(combine(), 500, x).prev_sample                              # noqa: E731
    else:
        step = dispatch.implementation("ddim_step", backend, device)
        tp = t - 20
        fused = lambda: step(x, out, t, tp, table, None, None, 0, 0.0, 0, True, 1.0, 1.0, W)          # noqa: E731
        python = lambda: step(x, combine(), t, tp, table, None, None, 0, 0.0, 0, True, 1.0, 1.0, None)  # noqa: E731
        ds = diffusers.DDIMScheduler(num_train_timesteps=1000)
        ds.set_timesteps(50)
        theirs = lambda: ds.step(combine(), 500, x, eta=0.0).prev_sample                     # noqa: E731
    return fused, python, theirs


@pytest.mark.parametrize("backend,dev", _backends())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_fused_guided_step_vs_python_combine(benchmark, speedup_report, backend, dev, shape, sampler):
    device = torch.device(dev)
    fused, python, theirs = _cases(sampler, backend, shape, device)
    torch.testing.assert_close(fused(), python(), rtol=1e-5, atol=1e-5)   # the same step being timed
    rounds = 30 if device.type == "cuda" else 15
    fused_ms, python_ms, theirs_ms = interleaved_ms([fused, python, theirs], device, rounds)
    benchmark.pedantic(fused, setup=lambda: sync(device), rounds=rounds, warmup_rounds=1, iterations=1)
    load = os.getloadavg()[0]
    benchmark.extra_info.update(
        sampler=sampler, backend=backend, shape=list(shape), fused_ms=round(fused_ms, 4),
        python_combine_ms=round(python_ms, 4), diffusers_ms=round(theirs_ms, 4),
        speedup_vs_python_combine=round(python_ms / fused_ms, 2),
        speedup_vs_diffusers=round(theirs_ms / fused_ms, 2), load_average_1min=round(load, 2),
        threads=torch.get_num_threads(), torch=torch.__version__,
        device=torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu")
    speedup_report(f"cfg {backend:<4} {sampler} {'x'.join(map(str, shape)):>12}: fused {fused_ms:8.3f} ms, "
                   f"python combine + step {python_ms:8.3f} ms ({python_ms / fused_ms:4.2f}x), "
                   f"+ diffusers step {theirs_ms:8.3f} ms ({theirs_ms / fused_ms:4.1f}x), load {load:.1f}")
