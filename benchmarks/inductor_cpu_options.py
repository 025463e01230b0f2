"""Inductor's CPU inference options on three models: per-forward time, cold compile, error.

    nice -n 5 python -m benchmarks.inductor_cpu_options                 # every model x option
    nice -n 5 python -m benchmarks.inductor_cpu_options --model dunet --option freezing

Models (batch 1 unless --batch): "ours" (ddpm_fast.UNet.tiny as the digits demo configures it:
ch=16, ch_mult=(1, 2, 2), 1x16x16, every weight random), "dunet" (the small diffusers
UNet2DModel with attention of benchmarks/bench_cpu_targets.py, 3x32x32), "lucid" (lucidrains'
denoising_diffusion_pytorch.Unet(dim=32, dim_mults=(1, 2)), 3x32x32).

Each (model, option) runs in a subprocess with a private, empty TORCHINDUCTOR_CACHE_DIR, so
"cold_s" (the first compiled call, wall clock) is an honest cold compile. Forward times are
medians of interleaved rounds (eager, compiled, eager, ...), one thread, wall and CPU time
(time.process_time: what this process ran, less sensitive to the other users of the machine).
"err" is max |compiled - eager float32| on the same input. Prints one JSON object per run and,
for the whole grid, a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

# name -> (torch.compile mode, Inductor options, channels_last)
OPTIONS = {
    "default": (None, {}, False),
    "freezing": (None, {"freezing": True}, False),
    "channels_last": (None, {}, True),
    "freezing+channels_last": (None, {"freezing": True}, True),
    "cpp_wrapper": (None, {"cpp_wrapper": True}, False),
    "freezing+cpp_wrapper": (None, {"freezing": True, "cpp_wrapper": True}, False),
    "max-autotune": ("max-autotune-no-cudagraphs", {}, False),
    "freezing+max-autotune": ("max-autotune-no-cudagraphs", {"freezing": True}, False),
    # the post-grad pass ddpm_fast.sample(compile=...) adds on CPU (samplers/attention_pass.py)
    "attention": (None, {"attention_pass": True}, False),
    "freezing+attention": (None, {"freezing": True, "attention_pass": True}, False),
}
MODELS = ("dunet", "ours", "lucid")


def build(name: str, batch: int):
    """(model, x, t, unwrap) with the model in eval mode and float32."""
    if name == "ours":
        from ddpm_fast import UNet
        torch.manual_seed(1)
        m = UNet.tiny(in_channels=1, resolution=16, ch=16, ch_mult=(1, 2, 2)).eval()
        with torch.no_grad():   # the zero-initialised output conv would make eps = 0
            for p in m.parameters():
                p.normal_(0, 0.3 / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.05)
        shape = (batch, 1, 16, 16)
        unwrap = lambda out: out
    elif name == "dunet":
        from .bench_cpu_targets import _dunet
        m = _dunet()
        shape = (batch, 3, 32, 32)
        unwrap = lambda out: out.sample
    elif name == "lucid":
        from tools.lucidrains_stubs import stub_lucidrains_training_deps
        stub_lucidrains_training_deps()   # the Unet needs none of its module's training deps
        from denoising_diffusion_pytorch import Unet
        torch.manual_seed(0)
        m = Unet(dim=32, dim_mults=(1, 2), channels=3).eval()
        shape = (batch, 3, 32, 32)
        unwrap = lambda out: out
    else:
        raise ValueError(name)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((batch,), 500, dtype=torch.int64)
    return m, x, t, unwrap


def interleaved(fns, rounds: int):
    """Median (wall ms, CPU ms) of each fn over interleaved rounds (one warm-up call each)."""
    for f in fns:
        f()
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for _ in range(rounds):
        for w, c, f in zip(wall, cpu, fns):
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            c.append((time.process_time() - c0) * 1e3)
            w.append((time.perf_counter() - t0) * 1e3)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def run_one(model_name: str, option: str, batch: int, rounds: int) -> dict:
    import ddpm_fast
    torch.set_num_threads(1)
    mode, options, channels_last = OPTIONS[option]
    model, x, t, unwrap = build(model_name, batch)
    # inside a compiled model ddpm_fast runs its norms on the reference backend (graph.py)
    backend = ddpm_fast.use_backend("reference") if model_name == "ours" else _null()
    with torch.no_grad():
        ref = unwrap(model(x, t)).clone()
        eager = lambda: model(x, t)
        cm, cx = model, x
        if channels_last:
            import copy
            cm = copy.deepcopy(model).to(memory_format=torch.channels_last)
            cx = x.contiguous(memory_format=torch.channels_last)
        options = dict(options)
        # Dynamo reads `freezing` from the global config when it traces (parameters become graph
        # attributes only then): options={"freezing": True} alone reaches Inductor too late
        # and freezes nothing. So it is patched around the first (compiling) call.
        freezing = options.pop("freezing", False)
        if options.pop("attention_pass", False):
            from ddpm_fast.samplers.attention_pass import PASS
            options["post_grad_custom_post_pass"] = PASS
        kwargs = {"dynamic": False, **({"mode": mode} if mode else {}), **({"options": options} if options else {})}
        compiled = torch.compile(cm, **kwargs)
        with backend:
            t0, c0, ch0 = time.perf_counter(), time.process_time(), os.times().children_user
            with torch._inductor.config.patch(freezing=freezing):
                out = unwrap(compiled(cx, t))
            cold_s = time.perf_counter() - t0
            cold_cpu_s = time.process_time() - c0 + (os.times().children_user - ch0)
            err = (out.float() - ref).abs().max().item()
            run_c = lambda: compiled(cx, t)
            (ew, ec), (cw, cc) = interleaved([eager, run_c], rounds)
    from torch._dynamo.utils import counters
    frames = counters["frames"]["total"]
    return {"model": model_name, "option": option, "batch": batch, "cold_s": round(cold_s, 1),
            "cold_cpu_s": round(cold_cpu_s, 1), "eager_ms": round(ew, 2), "eager_cpu_ms": round(ec, 2),
            "ms": round(cw, 2), "cpu_ms": round(cc, 2), "err": err,
            "frames": frames, "load": os.getloadavg()[0], "torch": torch.__version__}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def grid(models, options, batches, rounds: int) -> list:
    rows = []
    for model_name in models:
        for batch in batches.get(model_name, (1,)):
            for option in options:
                cache = tempfile.mkdtemp(prefix=f"inductor-{model_name}-{option}-")
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                cmd = [sys.executable, "-m", "benchmarks.inductor_cpu_options", "--model", model_name,
                       "--option", option, "--batch", str(batch), "--rounds", str(rounds)]
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                if p.returncode or not line:
                    row = {"model": model_name, "option": option, "batch": batch,
                           "failed": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
                else:
                    row = json.loads(line[-1])
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def table(rows) -> str:
    out = ["| model | batch | option | eager ms (CPU) | compiled ms (CPU) | speed-up vs eager (CPU) "
           "| cold compile s | max abs err | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            out.append(f"| {r['model']} | {r['batch']} | {r['option']} | failed: {r['failed']} |||||")
            continue
        out.append(f"| {r['model']} | {r['batch']} | {r['option']} | {r['eager_ms']:.2f} ({r['eager_cpu_ms']:.2f}) "
                   f"| {r['ms']:.2f} ({r['cpu_ms']:.2f}) | {r['eager_cpu_ms'] / r['cpu_ms']:.2f}x "
                   f"| {r['cold_s']:.0f} | {r['err']:.1e} | {r['load']:.1f} |")
    return "\n".join(out)


def sampler_run(compiles: list, steps: int, rounds: int) -> dict:
    """ddpm_fast.sample(dunet, (1, 3, 32, 32), compile=c) for each c in ``compiles`` against
    diffusers' DDPMScheduler loop on the eager model, as benchmarks/bench_cpu_targets.py runs
    them; one thread; ms per step (wall, CPU) interleaved, and cold build (compile) seconds."""
    import ddpm_fast
    from ddpm_fast import NoiseSchedule
    from .bench_cpu_targets import _diffusers_loop, _dunet
    torch.set_num_threads(1)
    model = _dunet()
    shape = (1, 3, 32, 32)
    fns, names, cold = [_diffusers_loop(model, shape, steps)], ["diffusers"], {}
    ref = None
    for c in compiles:
        run = (lambda c=c: ddpm_fast.sample(model, shape, schedule=NoiseSchedule.linear(steps), seed=0,
                                            device="cpu", compile=c))
        t0 = time.perf_counter()
        out = run()
        cold[repr(c)] = round(time.perf_counter() - t0, 1)
        ref = out if ref is None else ref
        fns.append(run)
        names.append(repr(c))
    diffs = {}
    if len(compiles) > 1:
        eager = ddpm_fast.sample(model, shape, schedule=NoiseSchedule.linear(steps), seed=0, device="cpu")
        for c, f in zip(compiles, fns[1:]):
            diffs[repr(c)] = (f() - eager).abs().max().item()
    res = interleaved(fns, rounds)
    d_cpu = res[0][1]
    return {"steps": steps, "rounds": rounds, "cold_s": cold, "max_abs_vs_eager": diffs,
            "per_step_ms": {n: (round(w / steps, 2), round(c / steps, 2)) for n, (w, c) in zip(names, res)},
            "speedup_cpu_vs_diffusers": {n: round(d_cpu / c, 2) for n, (w, c) in zip(names[1:], res[1:])},
            "load": os.getloadavg()[0], "torch": torch.__version__}


class _NoPass:
    """A post-grad pass that does nothing: compile=True as it was before the attention pass (a
    caller's own pass keeps ddpm_fast's out, samplers/attention_pass.py). Its uuid keeps Inductor's
    FX graph cache on; one instance, so every call has the same compile key."""

    def __call__(self, graph):
        pass

    def uuid(self):
        return b"ddpm_fast-benchmark-no-pass"

    def __repr__(self):
        return "no attention pass"


def _no_pass():
    try:  # torch >= 2.6: the cacheable pass type
        from torch._inductor.custom_graph_pass import CustomGraphPass
        return type("NoPass", (_NoPass, CustomGraphPass), {})()
    except ImportError:
        return _NoPass()


_NO_PASS = _no_pass()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS)
    ap.add_argument("--option", choices=list(OPTIONS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--options", default=",".join(OPTIONS))
    ap.add_argument("--sampler", action="store_true",
                    help="the whole sampler on dunet: compile=True, freezing and compile=True without the "
                         "attention pass vs diffusers' loop")
    a = ap.parse_args(argv)
    if a.sampler:
        compiles = [True, {"options": {"freezing": True}}, {"options": {"post_grad_custom_post_pass": _NO_PASS}}]
        print(json.dumps(sampler_run(compiles, steps=100, rounds=a.rounds)), flush=True)
        return
    if a.model and a.option:
        print(json.dumps(run_one(a.model, a.option, a.batch, a.rounds)), flush=True)
        return
    rows = grid(a.models.split(","), a.options.split(","), {"ours": (1, 64)}, a.rounds)
    print(table(rows))


if __name__ == "__main__":
    main()
