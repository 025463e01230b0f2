"""The CUDA extension half of the GPU check: build it with scripts/build_cuda_extension.sh (against
the CUDA build of torch in its own venv), then read what the build produced:

- the ``-Xptxas -v`` log(s) it saved -> registers / spills / smem per kernel and arch;
- the built library's SASS (``cuobjdump -sass``) -> widest global load/store per kernel and arch;
- the library loaded by the CUDA venv's python -> every ``ddpm_fast::`` op has a CUDA kernel.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from .ptx_report import demangle, parse_ptxas_log, sass_access_widths, split_sass_functions

ELEMENTWISE = ("q_sample", "reverse_step", "ddim_step", "temb_add")
_NOT_FP32 = re.compile(r"half|bfloat|BFloat16|Half|double|bf16|fp16", re.I)


def cuda_venv() -> Path:
    return Path(os.environ.get("DDPM_FAST_CUDA_VENV")
                or Path.home() / ".cache" / "ddpm_fast" / "cuda-venv")


def build(script: Path, out_dir: Path, log_path: Path, timeout: float = 3000) -> subprocess.Popen:
    """Start ``script OUT_DIR`` in the background, its output going to ``log_path``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    fh = open(log_path, "w")
    return subprocess.Popen(["bash", str(script), str(out_dir)], stdout=fh, stderr=subprocess.STDOUT,
                            env=env, cwd=Path(__file__).resolve().parents[1])


def _head(name: str) -> str:
    """A demangled name up to its parameter list."""
    return name.replace("(anonymous namespace)::", "").split("(", 1)[0]


def _template_args(name: str) -> str:
    """'void ns::k<float, c10::Half>(float const*, ...)' -> 'float, c10::Half' ('' if none)."""
    head = _head(name)
    if "<" not in head:
        return ""
    return head[head.index("<") + 1: head.rindex(">")] if ">" in head else ""


def short_name(name: str) -> str:
    """Demangled name without return type, namespace-qualified params and template args."""
    head = _head(name).split("<", 1)[0]
    return head.split()[-1].split("::")[-1] if head.split() else head


def _cuobjdump() -> str | None:
    cands = [shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"]
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda-13.0", "/usr/local/cuda"):
        if root:
            cands.append(os.path.join(root, "bin", "cuobjdump"))
    try:  # Triton ships one
        import triton.backends.nvidia as nv
        cands.append(os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump"))
    except Exception:  # noqa: BLE001
        pass
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def built_libraries(out_dir: Path) -> list[str]:
    """The built extension: OUT_DIR/*.so (the script's copy), else any *.so below OUT_DIR, one
    per file name (a library loaded twice would register its TORCH_LIBRARY twice)."""
    libs = sorted(glob.glob(str(out_dir / "*.so"))) or sorted(
        glob.glob(str(out_dir / "**" / "*.so"), recursive=True))
    by_name: dict[str, str] = {}
    for lib in libs:
        by_name.setdefault(os.path.basename(lib), lib)
    return list(by_name.values())


def sass_widths(libs: list[str]) -> tuple[dict, str]:
    """{(mangled, arch): widths} from the libraries' SASS, and a note if it could not be read."""
    tool = _cuobjdump()
    if not tool:
        return {}, "cuobjdump not found: no load/store widths for the CUDA kernels"
    res, notes = {}, []
    for lib in libs:
        p = subprocess.run([tool, "-sass", lib], capture_output=True, text=True)
        if p.returncode != 0:
            notes.append(f"cuobjdump -sass {lib}: {p.stderr.strip()[-500:]}")
            continue
        for key, text in split_sass_functions(p.stdout).items():
            res[key] = sass_access_widths(text)
    return res, "; ".join(notes)


def kernel_records(out_dir: Path) -> tuple[list[dict], list[str]]:
    """Report records for every kernel in the build's ptxas log(s), with SASS widths."""
    notes = []
    logs = sorted(set(glob.glob(str(out_dir / "**" / "*ptxas*"), recursive=True))
                  | set(glob.glob(str(out_dir / "**" / "*.log"), recursive=True)))
    stats: dict = {}
    for lg in logs:
        if os.path.isfile(lg):
            stats.update(parse_ptxas_log(Path(lg).read_text(errors="replace")))
    if not stats:
        notes.append(f"no ptxas -v report found under {out_dir} (looked at {len(logs)} logs)")
    libs = built_libraries(out_dir)
    widths, note = sass_widths(libs) if libs else ({}, f"no built library (*.so) under {out_dir}")
    if note:
        notes.append(note)
    names = demangle([k for k, _ in stats] + [k for k, _ in widths])
    records = []
    for (mangled, arch), st in sorted(stats.items(), key=lambda kv: (names[kv[0][0]], kv[0][1])):
        if "regs" not in st:  # a device function compiled on its own: only spills matter
            if st.get("spill_stores") or st.get("spill_loads"):
                st = dict(st, regs=0)
            else:
                continue
        full = names[mangled]
        sass_arch = arch.rstrip("a")
        w = widths.get((mangled, sass_arch)) or widths.get((mangled, arch)) or {}
        kernel = short_name(full)
        targs = _template_args(full)
        elementwise = any(e in kernel.lower() for e in ELEMENTWISE)
        records.append({
            "source": "cuda", "name": full, "kernel": kernel, "op": "",
            "config": targs or "-", "arch": sass_arch, "ok": True, "error": "",
            "elementwise": elementwise,
            "fp32": not _NOT_FP32.search(targs or kernel),
            "regs": st.get("regs", 0), "spill_stores": st.get("spill_stores", 0),
            "spill_loads": st.get("spill_loads", 0), "stack": st.get("stack", 0),
            "smem": st.get("smem", 0),
            "load_bytes": w.get("load"), "store_bytes": w.get("store"),
            "n_load": w.get("n_load"), "n_store": w.get("n_store"),
        })
    return records, notes


_REG_CHECK = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from tools.op_schemas import load_table
table = load_table()
table.define()  # the schemas, as ddpm_fast/ops/extension.py defines them before loading
for lib in sys.argv[2:]:
    torch.ops.load_library(lib)
ops = [op.qualname() for op in table.OPS if op.cuda]  # CPU-only ops (OpSpec.cuda False) have none
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "ops": {n: torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA") for n in ops}}))
"""
REPO = Path(__file__).resolve().parents[1]


def registrations(out_dir: Path, python: Path | None = None) -> dict:
    """Load the built libraries in the CUDA venv's python: {"ops": {op: has CUDA kernel}, ...}
    or {"error": why}."""
    libs = built_libraries(out_dir)
    if not libs:
        return {"error": f"no built library (*.so) under {out_dir}"}
    python = python or cuda_venv() / "bin" / "python"
    if not Path(python).exists():
        return {"error": f"CUDA torch venv python not found: {python}"}
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    p = subprocess.run([str(python), "-c", _REG_CHECK, str(REPO), *libs], capture_output=True, text=True,
                       env=env, timeout=600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"loading {libs} failed ({p.returncode}): {p.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def wait(proc: subprocess.Popen, timeout: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = -9
    return rc, time.perf_counter() - t0
