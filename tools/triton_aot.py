"""Ahead-of-time compile of Triton kernel specs for sm_80 / sm_90 on a machine without a GPU.

Each spec (``tools.triton_specs.aot_specs()`` or any ``module:function`` returning the same
kind of objects) names a raw ``triton.jit`` function, its signature (arg -> Triton type, with
"constexpr" entries), the constexpr values of one launch configuration, the arguments the runtime
specialises as divisible by 16 (16-byte aligned pointers, sizes % 16 == 0), num_warps/num_stages,
and whether the kernel is element-wise. We compile exactly that specialisation with
``triton.compile`` and read Triton's own ptxas -v log (TRITON_DUMP_PTXAS_LOG), so the registers
and spills are the ones the runtime would get.

The compiles run in worker subprocesses (``python -m tools.triton_aot``) whose
environment has no TRITON_INTERPRET: under the interpreter ``triton.jit`` returns functions that
cannot be compiled, and tests/conftest.py sets it on GPU-less machines.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

from .ptx_report import parse_ptxas_log, ptx_access_widths

DEFAULT_SPECS = "tools.triton_specs:aot_specs"
ARCHS = (80, 90)
_HALF_TYPES = ("fp16", "bf16", "fp8")


def load_specs(provider: str) -> list:
    """``"module:function"`` -> the list of specs it returns."""
    mod, _, func = provider.partition(":")
    return list(getattr(importlib.import_module(mod), func or "aot_specs")())


def _float_pointer_types(signature: dict) -> list[str]:
    return [t[1:] for t in signature.values() if isinstance(t, str) and t.startswith("*")
            and t[1:].startswith(("fp", "bf"))]


def describe(spec) -> dict:
    """The spec's identity in the report: kernel, op, config string, data dtype, flags."""
    sig = dict(spec.signature)
    data = [t for t in dict.fromkeys(_float_pointer_types(sig)) if t != "fp64"]
    const = " ".join(f"{k}={v}" for k, v in dict(spec.constexprs).items())
    config = " ".join(x for x in ["+".join(data) or "-", const, f"w{spec.num_warps}",
                                  f"s{spec.num_stages}"] if x)
    return {"name": spec.name, "kernel": spec.name, "fn": _raw_fn(spec.fn).__name__,
            "op": getattr(spec, "op", ""), "divisible_args": list(spec.divisible_args),
            "config": config, "dtype": "+".join(data) or "-",
            "elementwise": bool(getattr(spec, "elementwise", False)),
            # "at fp32": every data pointer is fp32 (the fp64 schedule table does not count)
            "fp32": bool(data) and all(t == "fp32" for t in data),
            # a kernel with one data pointer (a generator such as Philox) can only write it: its
            # loads are scalar parameters, so only its stores are held to the 16-byte rule
            "gate_loads": len([t for t in _float_pointer_types(sig) if t != "fp64"]) > 1}


def _raw_fn(fn):
    while hasattr(fn, "fn") and not hasattr(fn, "arg_names"):  # Autotuner / Heuristics wrappers
        fn = fn.fn
    return fn


def _ptxas_fallback(ptx: str, capability: int) -> str:
    """Run ptxas -v ourselves (Triton versions without TRITON_DUMP_PTXAS_LOG)."""
    from triton.backends.nvidia import compiler as nv
    try:
        tool = nv.get_ptxas(capability)
    except TypeError:
        tool = nv.get_ptxas()
    arch = "sm_90a" if capability == 90 else f"sm_{capability}"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        res = subprocess.run([tool.path, "-v", "-lineinfo", f"--gpu-name={arch}", f.name, "-o",
                              os.devnull], capture_output=True, text=True)
        return res.stdout + res.stderr
    finally:
        os.unlink(f.name)


def cache_key(spec, capability: int) -> str:
    """Everything the compiled result depends on: Triton version, the kernel's source and that of
    the functions it calls (JITFunction.cache_key), the specialisation, options and target."""
    import hashlib

    import triton
    fn = _raw_fn(spec.fn)
    parts = [triton.__version__, fn.cache_key, sorted(dict(spec.signature).items()),
             sorted((k, repr(v)) for k, v in dict(spec.constexprs).items()),
             sorted(spec.divisible_args), spec.num_warps, spec.num_stages, capability,
             [os.environ.get(k, "") for k in ("TRITON_DEFAULT_FP_FUSION", "TRITON_PTXAS_PATH",
                                              "TRITON_PTXAS_BLACKWELL_PATH")], _CACHE_VERSION]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


_CACHE_VERSION = 1  # bump when a record's fields or their meaning change


def compile_cached(spec, capability: int, cache_dir: str | None) -> dict:
    """``compile_one`` with its record kept in ``cache_dir`` (unchanged kernels: no compile)."""
    if not cache_dir:
        return compile_one(spec, capability)
    try:
        path = os.path.join(cache_dir, cache_key(spec, capability) + ".json")
    except Exception:  # noqa: BLE001 — cannot key it: compile it (compile_one reports errors)
        return compile_one(spec, capability)
    if os.path.exists(path):
        try:
            with open(path) as f:
                rec = json.load(f)
            rec.update(describe(spec), cached=True)  # names may change without the code changing
            return rec
        except (OSError, ValueError):
            pass
    rec = compile_one(spec, capability)
    if rec["ok"] or rec["error"].startswith(("CompilationError", "CompileTimeAssertionFailure",
                                              "AssertionError", "ValueError", "TypeError")):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.replace(tmp, path)
    return rec


def compile_one(spec, capability: int) -> dict:
    """Compile one spec for sm_<capability>; the report record (never raises)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rec = describe(spec)
    rec.update(arch=f"sm_{capability}", ok=False, error="")
    t0 = time.perf_counter()
    try:
        fn = _raw_fn(spec.fn)
        sig = dict(spec.signature)
        constexprs = dict(spec.constexprs)
        for k in constexprs:
            sig.setdefault(k, "constexpr")
        attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.divisible_args}
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        opts = {"num_warps": int(spec.num_warps), "num_stages": int(spec.num_stages)}
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            kern = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=opts)
        ptx = kern.asm["ptx"]
        log = buf.getvalue()
        if "registers" not in log:
            log = _ptxas_fallback(ptx, capability)
        stats = [v for (name, _), v in parse_ptxas_log(log).items() if "regs" in v]
        if not stats:
            raise RuntimeError(f"no ptxas -v report for {fn.__name__}:\n{log[-2000:]}")
        st = stats[0]
        md = kern.metadata
        shared = md.get("shared", 0) if isinstance(md, dict) else getattr(md, "shared", 0)
        widths = ptx_access_widths(ptx)
        rec.update(ok=True, regs=st["regs"], spill_stores=st.get("spill_stores", 0),
                   spill_loads=st.get("spill_loads", 0), stack=st.get("stack", 0),
                   smem=max(int(shared or 0), st.get("smem", 0)),
                   load_bytes=widths["load"], store_bytes=widths["store"],
                   n_load=widths["n_load"], n_store=widths["n_store"])
    except Exception as e:  # noqa: BLE001 — a failed compile is a finding, reported per kernel
        rec["error"] = f"{type(e).__name__}: {e}"[-4000:]
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def worker_env() -> dict:
    """Environment for a compile worker: no interpreter, ptxas log on, our sys.path visible."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DUMP_PTXAS_LOG"] = "1"
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + [os.getcwd()]))
    return env


def default_cache_dir() -> str:
    return os.environ.get("DDPM_FAST_GPU_CHECK_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ddpm_fast", "gpu_check")


def run_workers(provider: str, archs=ARCHS, jobs: int = 2, timeout: float = 900,
                cache_dir: str | None = None) -> list[dict]:
    """Compile every spec of ``provider`` for every arch in ``jobs`` parallel subprocesses.
    Records of unchanged kernels come from ``cache_dir`` (None: compile everything).
    Returns the records; a worker that dies yields one failed record saying why."""
    with tempfile.TemporaryDirectory(prefix="ddpm_fast_triton_cache_") as cache:
        env = worker_env()
        env["TRITON_CACHE_DIR"] = cache  # fresh cache: ptxas runs (and logs) for every kernel
        procs = [subprocess.Popen(
            [sys.executable, "-m", "tools.triton_aot", "--specs", provider,
             "--archs", ",".join(map(str, archs)), "--shard", f"{i}/{jobs}",
             "--cache-dir", cache_dir or ""],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(jobs)]
        records = []
        for i, p in enumerate(procs):
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                err = f"timed out after {timeout} s\n{err}"
            got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            records += got
            if p.returncode != 0:
                records.append({"name": f"<triton worker {i}/{jobs}>", "kernel": "<worker>",
                                "op": "", "config": provider, "arch": "-", "ok": False,
                                "elementwise": False, "fp32": False,
                                "error": f"worker exited {p.returncode}: {err[-3000:]}"})
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default=DEFAULT_SPECS)
    ap.add_argument("--archs", default="80,90")
    ap.add_argument("--shard", default="0/1", help="i/n: compile items i, i+n, ...")
    ap.add_argument("--cache-dir", default="", help="keep/reuse records here ('' = no cache)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1 is set: kernels cannot be compiled", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    i, n = map(int, args.shard.split("/"))
    specs = load_specs(args.specs)
    items = [(s, int(a)) for s in specs for a in args.archs.split(",")]
    for spec, cap in items[i::n]:
        print(json.dumps(compile_cached(spec, cap, args.cache_dir or None)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
