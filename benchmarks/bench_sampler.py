"""The sampler end to end, every implementation on the same model and device in one run.

    pytest benchmarks/bench_sampler.py --benchmark-only --benchmark-json=bench.json
    python -m benchmarks.report bench.json          # ratio table + PNG bar chart

Implementations (the ``impl`` of each case):
  diffusers       diffusers' DDPMScheduler loop, as a diffusers user writes it (torch.randn
                  noise, ``scheduler.step`` per timestep), on our model
  reference       ddpm_fast.sample with every op on the reference backend (plain PyTorch)
  fused           ddpm_fast.sample eagerly with the fused backend (cpp on CPU, cuda/triton on GPU)
  compiled        compile=True: Inductor-compiled model + step (no CUDA graph)
  graph           (GPU) cuda_graph=True: one captured step, eager model, replayed T times
  compiled_graph  (GPU) compile=True + cuda_graph=True
  graph_loop      (GPU) compile=True + cuda_graph="loop": all steps in one graph
  forward         the model's forward alone (compiled where compile is measured), steps times:
                  the floor the sampler's per-step overhead is measured against
Models: "identity" (model(x, t) = x, 3x32x32: the sampler's own per-step overhead), "tiny"
(UNet.tiny, 1x16x16) and "cifar10" (UNet.ddpm_cifar10, 3x32x32, Ho et al.'s 35.7M UNet).

Every case samples a *short DDPM schedule* of ``steps`` timesteps (NoiseSchedule.linear(steps),
DDPMScheduler(num_train_timesteps=steps)): the work per step is that of the T = 1000 loop, and
the report divides by ``steps`` (time per step; x1000 for a 1000-step sampler). On CPU the
step counts and batches are cut so the suite runs in minutes: cifar10 at batch 1 only, 3 steps;
tiny at batch 64, 4 steps. Compilation and capture happen in the warm-up round, outside the
timing. ``extra_info`` holds the device name, torch version, timestamp, threads and load.
DDPM_FAST_BENCH_DEVICE=cpu forces the CPU suite on a GPU machine; DDPM_FAST_BENCH_THREADS=n sets
torch's intra-op threads (on a shared, loaded CPU use 1: Inductor's kernels each open an OpenMP
region, and a descheduled second thread makes each spin for milliseconds).
"""
from __future__ import annotations

import os
import platform
import time

import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule, UNet

from .timing import sync

DEVICE = torch.device(os.environ.get("DDPM_FAST_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
GPU = DEVICE.type == "cuda"

# (model, batch) -> steps per measured run
if GPU:
    CASES = {("identity", 1): 1000, ("identity", 64): 1000, ("identity", 256): 1000,
             ("tiny", 1): 1000, ("tiny", 64): 200, ("tiny", 256): 100,
             ("cifar10", 1): 200, ("cifar10", 64): 50, ("cifar10", 256): 20}
    IMPLS = ("diffusers", "reference", "fused", "compiled", "graph", "compiled_graph", "graph_loop", "forward")
    ROUNDS = 5
else:
    CASES = {("identity", 1): 100, ("identity", 64): 20, ("tiny", 1): 20, ("tiny", 64): 4,
             ("cifar10", 1): 3}
    IMPLS = ("diffusers", "reference", "fused", "compiled", "forward")
    ROUNDS = 3
SHAPES = {"identity": (3, 32, 32), "tiny": (1, 16, 16), "cifar10": (3, 32, 32)}
GRAPH_IMPLS = {"graph": dict(cuda_graph=True), "compiled_graph": dict(cuda_graph=True, compile=True),
               "graph_loop": dict(cuda_graph="loop", compile=True)}


class Identity(torch.nn.Module):
    """model(x, t) = x: the sampler's cost alone."""

    def forward(self, x, t):
        return x


_models: dict = {}


def _model(name: str) -> torch.nn.Module:
    if name not in _models:
        torch.manual_seed(0)
        m = {"identity": Identity, "tiny": UNet.tiny, "cifar10": UNet.ddpm_cifar10}[name]()
        _models[name] = m.eval().to(DEVICE)
    return _models[name]


def _fused_backend() -> str | None:
    status = ddpm_fast.backends()
    for b in (("cuda", "triton") if GPU else ("cpp",)):
        if status[b] == "available":
            return b
    return None


def _runner(impl: str, model, shape, steps: int):
    """A no-argument function sampling ``steps`` DDPM steps with ``impl`` (None: not here)."""
    sched = NoiseSchedule.linear(steps)
    common = dict(schedule=sched, seed=0, device=DEVICE)
    if impl == "diffusers":
        from diffusers import DDPMScheduler
        scheduler = DDPMScheduler(num_train_timesteps=steps)
        scheduler.set_timesteps(steps, device=DEVICE)

        @torch.no_grad()
        def run():
            gen = torch.Generator(device=DEVICE).manual_seed(0)
            x = torch.randn(shape, generator=gen, device=DEVICE)
            for t in scheduler.timesteps:
                eps = model(x, t)
                x = scheduler.step(eps, t, x, generator=gen).prev_sample
            return x
        return run
    if impl == "reference":
        def run():
            with ddpm_fast.use_backend("reference"):
                return ddpm_fast.sample(model, shape, backend="reference", cuda_graph=False, **common)
        return run
    if impl == "fused":
        backend = _fused_backend()
        if backend is None:
            return None
        return lambda: ddpm_fast.sample(model, shape, backend=backend, cuda_graph=False, **common)
    if impl == "compiled":
        return lambda: ddpm_fast.sample(model, shape, compile=True, cuda_graph=False, **common)
    if impl in GRAPH_IMPLS:
        return lambda: ddpm_fast.sample(model, shape, **GRAPH_IMPLS[impl], **common)
    if impl == "forward":
        if isinstance(model, Identity):
            return None
        net = torch.compile(model)
        x = torch.randn(shape, device=DEVICE)
        t = torch.full((shape[0],), steps // 2, dtype=torch.int64, device=DEVICE)

        from ddpm_fast.samplers.graph import COMPILED_MODEL_BACKEND
        backend = COMPILED_MODEL_BACKEND.get(DEVICE.type, "auto")   # as the compiled sampler runs it

        @torch.no_grad()
        def run():
            with ddpm_fast.use_backend(backend):
                for _ in range(steps):
                    out = net(x, t)
            return out
        return run
    raise ValueError(impl)


def _info(model_name: str, batch: int, steps: int, impl: str) -> dict:
    import diffusers
    return {
        "suite": "sampler", "model": model_name, "batch": batch, "steps": steps, "impl": impl,
        "device": str(DEVICE),
        "device_name": torch.cuda.get_device_name(DEVICE) if GPU else _cpu_name(),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "ddpm_fast": ddpm_fast.__version__, "backends": _fused_backend() or "reference",
        "threads": torch.get_num_threads(), "loadavg": os.getloadavg()[0],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


PARAMS = [pytest.param(m, b, impl, id=f"{m}-b{b}-{impl}") for (m, b) in CASES for impl in IMPLS]


@pytest.mark.parametrize("model_name,batch,impl", PARAMS)
def test_sampler(benchmark, sampler_rows, model_name, batch, impl):
    steps = CASES[(model_name, batch)]
    shape = (batch, *SHAPES[model_name])
    run = _runner(impl, _model(model_name), shape, steps)
    if run is None:
        pytest.skip(f"{impl} is not available for {model_name} on {DEVICE.type}")

    def timed():
        out = run()
        sync(DEVICE)
        return out

    benchmark.group = f"sampler {model_name} b{batch} ({steps} steps)"
    benchmark.extra_info.update(_info(model_name, batch, steps, impl))
    out = benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert torch.isfinite(out).all()
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        sampler_rows.append({"model": model_name, "batch": batch, "steps": steps, "impl": impl,
                             "device": str(DEVICE), "median_s": stats.stats.median})
