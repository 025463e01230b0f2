#!/usr/bin/env bash
# Usage: scripts/build_cuda_extension.sh OUT_DIR
#
# Builds the full extension (CPU kernels + CUDA kernels + torch binding) against the CUDA build of
# torch (torch==2.14.1, cu130) in its own virtual environment, OUT OF TREE: nothing is written into
# ddpm_fast/ (the CPU build's _C*.so there is left alone). Works on a machine without a GPU.
# Writes:
#   OUT_DIR/_C.<abi>.so        the built library
#   OUT_DIR/ptxas.log          the `-Xptxas -v` lines of every kernel (registers, spills, smem);
#                              objects are kept in OUT_DIR/tmp, so reuse OUT_DIR only for quick
#                              rebuilds: a fresh OUT_DIR gives the complete ptxas report
#   OUT_DIR/build.log          the whole build log
#   OUT_DIR/registration.txt   one line per op of ddpm_fast/ops/table.py: "<op> CPU=<0|1> CUDA=<0|1>"
# Exits non-zero when the build fails or any op lacks a CPU or a CUDA kernel.
#
# Env: DDPM_FAST_CUDA_VENV  the venv (default $HOME/.cache/ddpm_fast/cuda-venv; created with
#                           `pip install torch==2.14.1 ninja` when missing)
#      CUDA_HOME            the CUDA toolkit (default /usr/local/cuda-13.0)
#      TORCH_CUDA_ARCH_LIST default "8.0;9.0"
#      MAX_JOBS             parallel compile jobs (default 2)
set -euo pipefail
if [ $# -ne 1 ]; then sed -n '2,23p' "$0" >&2; exit 2; fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
VENV=${DDPM_FAST_CUDA_VENV:-$HOME/.cache/ddpm_fast/cuda-venv}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
export MAX_JOBS=${MAX_JOBS:-2}
export PATH="$CUDA_HOME/bin:$PATH"

if ! "$VENV/bin/python" -c "import torch, ninja" 2>/dev/null; then
  echo "build_cuda_extension: creating $VENV (torch==2.14.1, ninja)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 ninja setuptools wheel
fi
PY="$VENV/bin/python"
"$PY" -c "import setuptools" 2>/dev/null || "$VENV/bin/pip" install -q setuptools wheel
TORCH_CUDA=$("$PY" -c "import torch; print(torch.version.cuda or '')")
[ -n "$TORCH_CUDA" ] || { echo "build_cuda_extension: torch in $VENV has no CUDA" >&2; exit 1; }
# headers of the CUDA libraries torch's CUDA headers include (cuBLAS, cuSPARSE, ...), from its wheels
NV_INC=$("$PY" -c "import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'include'))" 2>/dev/null || true)
[ -n "$NV_INC" ] && [ -d "$NV_INC" ] && export CPATH="$NV_INC${CPATH:+:$CPATH}"

start=$(date +%s)
echo "build_cuda_extension: torch $("$PY" -c 'import torch; print(torch.__version__)') (CUDA $TORCH_CUDA), archs $TORCH_CUDA_ARCH_LIST -> $OUT"
cd "$ROOT"
# a library of an earlier run (e.g. _C.cpython-311-*.so before the module became _C.abi3.so) would
# be picked up below as a second match
rm -f "$OUT"/_C*.so "$OUT"/lib/ddpm_fast/_C*.so
if ! DDPM_FAST_CUDA=1 DDPM_FAST_PTXAS_VERBOSE=1 DDPM_FAST_BUILD_TEMP="$OUT/tmp" \
    "$PY" setup.py -q build_ext -b "$OUT/lib" \
    > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log" >&2
  echo "build_cuda_extension: build failed (full log: $OUT/build.log)" >&2
  exit 1
fi
SO=$(ls "$OUT"/lib/ddpm_fast/_C*.so)
cp "$SO" "$OUT/"
SO="$OUT/$(basename "$SO")"
grep -E "^ptxas|Function properties|bytes stack frame" "$OUT/build.log" > "$OUT/ptxas.log" || true
echo "build_cuda_extension: built $(basename "$SO") in $(( $(date +%s) - start )) s; ptxas report: $OUT/ptxas.log"

"$PY" - "$SO" "$ROOT" "$OUT/registration.txt" <<'PYEOF'
import sys
import torch
so, root, report = sys.argv[1:4]
sys.path.insert(0, root)
from tools.op_schemas import load_table
table = load_table()
table.define()  # the schemas, as ddpm_fast/ops/extension.py defines them before loading the library
torch.ops.load_library(so)
ops = [op.name for op in table.OPS]
has = torch._C._dispatch_has_kernel_for_dispatch_key
lines, missing = [], []
for op in ops:
    cpu, cuda = (has(f"ddpm_fast::{op}", k) for k in ("CPU", "CUDA"))
    lines.append(f"{op} CPU={int(cpu)} CUDA={int(cuda)}")
    if not (cpu and (cuda or not table.BY_NAME[op].cuda)):   # CPU-only ops: OpSpec.cuda False
        missing.append(op)
open(report, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
if missing or not ops:
    sys.exit(f"build_cuda_extension: ops without a CPU or CUDA kernel: {missing or 'no ops found'}")
print(f"build_cuda_extension: all {len(ops)} ops have CPU kernels, and CUDA kernels where the table says so")
PYEOF
