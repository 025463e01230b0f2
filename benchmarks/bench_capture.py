"""What a CUDA graph costs to build, and when capturing the whole loop pays (GPU only).

    pytest benchmarks/bench_capture.py --benchmark-only

For cuda_graph=False ("eager": no graph, the baseline), "step" (one step captured, replayed T
times) and "loop" (all T steps in one graph), T = 1000, batch 1, eager model: the first call's
time (warm-up + capture + instantiate, the cache emptied before each round) and a cached call's
time. "step" pays for its capture against eager after (build_step - call_eager) /
(call_eager - call_step) calls. "loop" records T x (model +
step) nodes, so it costs about T times "step"'s capture; per call it saves T - 1 graph launches.
The summary prints the calls after which "loop" has paid for its capture:
    break-even calls = (build_loop - build_step) / (call_step - call_loop)
(never, when "loop" is not faster per call). docs/fast_sampler.md explains the choice.
"""
from __future__ import annotations

import time

import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule, UNet
from ddpm_fast.samplers import cache

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

T = 1000
MODES = ("eager", "step", "loop")
_results: dict = {}


class Identity(torch.nn.Module):
    def forward(self, x, t):
        return x


def _model(name: str):
    torch.manual_seed(0)
    return {"identity": Identity, "tiny": UNet.tiny}[name]().eval().cuda()


def _timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


@pytest.mark.parametrize("model_name,shape", [("identity", (1, 3, 32, 32)), ("tiny", (1, 1, 16, 16))])
@pytest.mark.parametrize("mode", MODES)
def test_capture_cost(benchmark, speedup_report, model_name, shape, mode):
    model = _model(model_name)
    kw = dict(schedule=NoiseSchedule.linear(T), seed=0, device="cuda", cuda_graph=False if mode == "eager" else mode)
    new_captures = 0 if mode == "eager" else 2

    def build():
        cache.clear_cache()
        ddpm_fast.sample(model, shape, **kw)

    captures = cache.cache_info()["captures"]
    benchmark.pedantic(build, rounds=2, iterations=1, warmup_rounds=0)
    assert cache.cache_info()["captures"] == captures + new_captures   # each round captured once
    build_s = benchmark.stats.stats.median
    call_s = min(_timed(lambda: ddpm_fast.sample(model, shape, **kw)) for _ in range(5))
    assert cache.cache_info()["captures"] == captures + new_captures   # cached calls replay
    benchmark.extra_info.update({"suite": "capture", "model": model_name, "mode": mode, "T": T,
                                 "build_s": build_s, "call_s": call_s,
                                 "device_name": torch.cuda.get_device_name()})
    _results[(model_name, mode)] = (build_s, call_s)
    speedup_report(f"capture {model_name} {mode}: first call {build_s * 1e3:.1f} ms, "
                   f"cached call {call_s * 1e3:.2f} ms ({call_s / T * 1e6:.2f} us/step)")
    if all((model_name, m) in _results for m in MODES):
        (_, c_eager), (b_step, c_step), (b_loop, c_loop) = (_results[(model_name, m)] for m in MODES)
        speedup_report(f"capture {model_name}: 'step' pays for its capture against eager "
                       f"{_break_even(b_step - c_eager, c_eager - c_step)}; 'loop' against 'step' "
                       f"{_break_even(b_loop - b_step, c_step - c_loop)}")


def _break_even(extra_build_s: float, gain_per_call_s: float) -> str:
    """After how many calls a one-off extra cost is paid back by a per-call gain."""
    if gain_per_call_s <= 0:
        return "never (not faster per call)"
    return f"after {max(0.0, extra_build_s / gain_per_call_s):.0f} calls"
