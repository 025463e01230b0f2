"""GPU code proven on a machine without a GPU (``make gpu-check``).

1. Every Triton kernel spec of the package (``tools.triton_specs.aot_specs()``: each kernel x
   autotune config x dtype) is compiled for sm_80 and sm_90 with the runtime's specialisation;
   registers / spills / shared memory come from ptxas -v, the widest global load/store from the
   PTX.
2. The full CUDA extension is built by ``scripts/build_cuda_extension.sh OUT_DIR`` against the
   CUDA build of torch; its ``-Xptxas -v`` log gives registers / spills per kernel and arch, its
   SASS the widest global load/store, and loading it in the CUDA venv shows that every
   ``ddpm_fast::`` op (and every op of the ops contract) has a CUDA kernel.
3. A table on stdout and ``benchmarks/results/gpu_check.json``.
4. Exit status: 0 pass; 1 a kernel failed to compile, spills, an element-wise kernel moves < 16
   bytes per thread per global load or store at fp32, or an op lacks a CUDA kernel; 3 incomplete
   (a piece to check is missing: no Triton specs, no build script, build produced nothing).

``--skip-cuda-build`` checks the Triton kernels only (quick runs; status "pass-triton-only").
Triton results are cached per kernel specialisation (keyed by Triton's hash of the kernel source
and of the functions it calls, the specialisation, options and target), so a re-run compiles only
changed kernels; ``--no-cache`` compiles everything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from . import cuda_ext
from .triton_aot import ARCHS, DEFAULT_SPECS, default_cache_dir, run_workers

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "results" / "gpu_check.json"
BUILD_SCRIPT = REPO / "scripts" / "build_cuda_extension.sh"
MIN_BYTES = 16  # per thread per global load/store, element-wise kernels at fp32 (one 128-bit access)

# Kernels that draw Philox normals: their Box-Muller must not call into libm's sin/cos slow path,
# whose local array is the only stack frame they ever had (csrc/include/ddpm_fast/box_muller_math.h).
NOISE_KERNELS = ("philox", "q_sample_seeded", "reverse_step", "ddim_step")

PASS, FAIL, INCOMPLETE = 0, 1, 3


def _groupnorm_widths(rec: dict) -> tuple[str, ...]:
    """Which global accesses of a GroupNorm kernel record must be 16 bytes wide: the fp32 Triton
    kernels' loads and stores (the split path's stats kernel stores 3 scalars: loads only); the
    CUDA vector kernels (template width 8; the W = 1 fallback and the per-row finalize kernel
    are scalar by design)."""
    name = rec.get("kernel", "").lower()
    if "groupnorm" not in name or not rec.get("fp32"):
        return ()
    if rec.get("source") == "cuda" and ("finalize" in name or rec.get("config") != "8"):
        return ()
    return ("load",) if "stats" in name else ("load", "store")


def problems(rec: dict) -> list[str]:
    """Why one kernel record fails the gate (empty list: it passes)."""
    if not rec.get("ok"):
        return ["compile failed: " + (rec.get("error") or "?").strip().splitlines()[-1][:300]]
    out = []
    if rec.get("stack") and any(k in rec.get("kernel", "").lower() for k in NOISE_KERNELS):
        out.append(f"noise kernel has a {rec['stack']} B stack frame")
    for kind in _groupnorm_widths(rec):
        b = rec.get(f"{kind}_bytes")
        if b is not None and b < MIN_BYTES:
            out.append(f"GroupNorm kernel: widest global {kind} {b} B < {MIN_BYTES} B")
    if rec.get("spill_stores") or rec.get("spill_loads"):
        out.append(f"spills {rec['spill_stores']} B stores / {rec['spill_loads']} B loads")
    if rec.get("elementwise") and rec.get("fp32"):
        for kind in ("load", "store") if rec.get("gate_loads", True) else ("store",):
            b = rec.get(f"{kind}_bytes")
            if b is None:
                continue  # width unknown (no SASS); reported as a note, not as a failure
            if b < MIN_BYTES:
                out.append(f"element-wise fp32 kernel: widest global {kind} {b} B < {MIN_BYTES} B")
    return out


def _expected_ops() -> list[str]:
    """The ops of the table (ddpm_fast/ops/table.py) that need a CUDA kernel (``OpSpec.cuda``)."""
    try:
        from ddpm_fast.ops.table import OPS
        return sorted(op.name for op in OPS if op.cuda)
    except Exception:  # noqa: BLE001
        return []


def format_table(records: list[dict]) -> str:
    cols = [("source", 6), ("kernel", 28), ("config", 34), ("arch", 5), ("regs", 4),
            ("spill st/ld", 11), ("smem", 6), ("ld B", 4), ("st B", 4), ("check", 5)]

    def cell(rec, c):
        if c == "spill st/ld":
            return f"{rec.get('spill_stores', '-')}/{rec.get('spill_loads', '-')}" if rec.get("ok") else "-"
        if c == "ld B":
            return "-" if rec.get("load_bytes") is None else str(rec["load_bytes"])
        if c == "st B":
            return "-" if rec.get("store_bytes") is None else str(rec["store_bytes"])
        if c == "check":
            return "FAIL" if rec["problems"] else ("ok*" if rec.get("elementwise") else "ok")
        v = rec.get(c, "-")
        return "-" if v is None else str(v)

    widths = [max(w, *(len(cell(r, c)) for r in records)) if records else w for c, w in cols]
    widths = [min(w, 60) for w in widths]
    line = "  ".join(c.ljust(w) for (c, _), w in zip(cols, widths))
    rows = [line, "-" * len(line)]
    for r in records:
        rows.append("  ".join(cell(r, c)[:w].ljust(w) for (c, _), w in zip(cols, widths)))
    rows.append("(ok* = element-wise kernel: at fp32 must load and store >= 16 B per thread)")
    return "\n".join(rows)


def format_summary(records: list[dict]) -> str:
    """One line per (source, op or kernel, arch): how many configs, register range, worst spill,
    narrowest widest-load/store over the configs (fp32 configs, else all)."""
    groups: dict = {}
    for r in records:
        if not r.get("ok") or r.get("regs") is None:
            continue
        key = (r.get("source", ""), r.get("op") or r["kernel"], r.get("arch", ""))
        groups.setdefault(key, []).append(r)
    head = f"{'source':6}  {'op / kernel':28}  {'arch':5}  {'cfgs':>4}  {'regs':>7}  {'max spill':>9}  " \
           f"{'max stack':>9}  {'min ld B':>8}  {'min st B':>8}  fail"
    rows = [head, "-" * len(head)]

    def lo(vals):
        vals = [v for v in vals if v is not None]
        return str(min(vals)) if vals else "-"

    for (src, name, arch), rs in sorted(groups.items()):
        regs = [r["regs"] for r in rs]
        spill = max(max(r.get("spill_stores", 0), r.get("spill_loads", 0)) for r in rs)
        stack = max(r.get("stack") or 0 for r in rs)
        wide = [r for r in rs if r.get("fp32")] or rs
        rows.append(f"{src:6}  {name[:28]:28}  {arch:5}  {len(rs):>4}  "
                    f"{min(regs):>3}-{max(regs):<3}  {spill:>9}  {stack:>9}  "
                    f"{lo(r.get('load_bytes') for r in wide):>8}  "
                    f"{lo(r.get('store_bytes') for r in wide):>8}  {sum(1 for r in rs if r['problems'])}")
    return "\n".join(rows)


def run(args) -> tuple[int, dict]:
    t0 = time.perf_counter()
    archs = tuple(int(a) for a in args.archs.split(","))
    notes: list[str] = []
    incomplete: list[str] = []

    # CUDA build in the background while the Triton kernels compile (both are mostly one core).
    build_proc = None
    work = None
    if args.skip_cuda_build:
        notes.append("CUDA extension build skipped (--skip-cuda-build)")
    elif not Path(args.build_script).exists():
        incomplete.append(f"{args.build_script} is missing: CUDA extension not checked")
    else:
        work = Path(args.cuda_out) if args.cuda_out else Path(tempfile.mkdtemp(prefix="ddpm_fast_cuda_"))
        build_log = work / "build_cuda_extension.out"
        work.mkdir(parents=True, exist_ok=True)
        build_proc = cuda_ext.build(Path(args.build_script), work / "out", build_log)
        print(f"[gpu-check] building the CUDA extension in the background (log: {build_log})")

    t_tri = time.perf_counter()
    print(f"[gpu-check] compiling Triton kernels from {args.specs} for "
          f"{', '.join(f'sm_{a}' for a in archs)} with {args.jobs} workers")
    cache = None if args.no_cache else default_cache_dir()
    records = [dict(r, source="triton")
               for r in run_workers(args.specs, archs, args.jobs, cache_dir=cache)]
    n_cached = sum(1 for r in records if r.get("cached"))
    triton_s = time.perf_counter() - t_tri
    if not records:
        incomplete.append(f"no Triton kernel specs from {args.specs}")
    elif all(r.get("kernel") == "<worker>" for r in records):
        err = records[0]["error"]
        if "aot_specs" in err or "ModuleNotFoundError" in err or "AttributeError" in err:
            incomplete.append(f"Triton kernel specs unavailable ({args.specs}): "
                              f"{err.strip().splitlines()[-1]}")
            records = []
    print(f"[gpu-check] Triton: {len(records)} kernels in {triton_s:.1f} s "
          f"({n_cached} unchanged, from the cache {cache})" if n_cached else
          f"[gpu-check] Triton: {len(records)} compiles in {triton_s:.1f} s")

    cuda = {"built": False}
    if build_proc is not None:
        rc, waited = cuda_ext.wait(build_proc, args.build_timeout)
        cuda.update(build_rc=rc, build_dir=str(work), build_wait_s=round(waited, 1))
        out_dir = work / "out"
        crec, cnotes = cuda_ext.kernel_records(out_dir)
        notes += cnotes
        records += crec
        cuda["kernels"] = len(crec)
        if rc != 0:
            tail = (work / "build_cuda_extension.out").read_text(errors="replace")[-3000:]
            records.append({"source": "cuda", "kernel": "<build>", "name": "build_cuda_extension.sh",
                            "config": "-", "arch": "-", "ok": False, "elementwise": False,
                            "error": f"build_cuda_extension.sh exited {rc}:\n{tail}"})
        if not crec and rc == 0:
            incomplete.append("the CUDA build reported no kernels (no ptxas -v log found)")
        reg = cuda_ext.registrations(out_dir)
        cuda["registrations"] = {k: v for k, v in reg.items() if k != "ops"}
        if "error" in reg:
            (incomplete if rc == 0 else notes).append(f"CUDA op registrations not checked: {reg['error']}")
        else:
            cuda["built"] = True
            ops = reg["ops"]
            missing = sorted(op for op, has in ops.items() if not has)
            expected = _expected_ops()
            absent = sorted(op for op in expected if f"ddpm_fast::{op}" not in ops)
            cuda.update(ops=ops, ops_without_cuda_kernel=missing, contract_ops_not_in_schema=absent)
            for op in missing + [f"ddpm_fast::{op} (not in the extension's schema)" for op in absent]:
                records.append({"source": "cuda", "kernel": "<registration>", "name": op,
                                "config": op, "arch": "-", "ok": False, "elementwise": False,
                                "error": f"no CUDA kernel registered for {op}"})
            if not ops:
                incomplete.append("the built extension registers no ddpm_fast:: ops")

    for r in records:
        r["problems"] = problems(r)
    failed = [r for r in records if r["problems"]]
    status = (FAIL if failed else INCOMPLETE if incomplete else PASS)
    label = {FAIL: "fail", INCOMPLETE: "incomplete", PASS: "pass"}[status]
    if status == PASS and args.skip_cuda_build:
        label = "pass-triton-only"
    report = {
        "status": label,
        "seconds": round(time.perf_counter() - t0, 1),
        "triton_seconds": round(triton_s, 1),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(),
        "versions": _versions(),
        "archs": [f"sm_{a}" for a in archs],
        "min_elementwise_bytes": MIN_BYTES,
        "specs": args.specs,
        "incomplete": incomplete, "notes": notes,
        "failures": [{"source": r.get("source"), "kernel": r["kernel"], "config": r.get("config"),
                      "arch": r.get("arch"), "problems": r["problems"]} for r in failed],
        "cuda": cuda,
        "kernels": records,
    }
    return status, report


def _versions() -> dict:
    out = {}
    for mod in ("torch", "triton"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu_check",
                                 description="Compile every Triton and CUDA kernel for sm_80/sm_90 "
                                             "without a GPU; report registers, spills, vector widths.")
    ap.add_argument("--skip-cuda-build", action="store_true",
                    help="check the Triton kernels only")
    ap.add_argument("--specs", default=DEFAULT_SPECS,
                    help="module:function returning the Triton kernel specs (default %(default)s)")
    ap.add_argument("--archs", default=",".join(map(str, ARCHS)))
    ap.add_argument("--jobs", type=int, default=max(1, min(os.cpu_count() or 1, 4)))
    ap.add_argument("--build-script", default=str(BUILD_SCRIPT),
                    help="builds the CUDA extension into its OUT_DIR argument (default %(default)s)")
    ap.add_argument("--cuda-out", default=None,
                    help="work folder for the CUDA build (default: a fresh temporary folder)")
    ap.add_argument("--build-timeout", type=float, default=2400)
    ap.add_argument("--no-cache", action="store_true",
                    help="compile every Triton kernel even if unchanged since the last run "
                         "(cache: $DDPM_FAST_GPU_CHECK_CACHE or ~/.cache/ddpm_fast/gpu_check)")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="report path ('' for none)")
    args = ap.parse_args(argv)

    status, report = run(args)
    print(format_table(report["kernels"]))
    print()
    print("Summary (min ld/st B over the fp32 configurations):")
    print(format_summary(report["kernels"]))
    for f in report["failures"]:
        print(f"FAIL {f['source']} {f['kernel']} [{f['config']}] {f['arch']}: {'; '.join(f['problems'])}")
    for n in report["incomplete"]:
        print(f"INCOMPLETE {n}")
    for n in report["notes"]:
        print(f"note: {n}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"[gpu-check] report: {args.json}")
    print(f"[gpu-check] {report['status'].upper()} in {report['seconds']} s "
          f"({len(report['kernels'])} kernel records, {len(report['failures'])} failing)")
    return status


if __name__ == "__main__":
    sys.exit(main())
