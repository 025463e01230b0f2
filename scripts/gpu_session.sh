#!/usr/bin/env bash
# One call on a lent GPU (the device tool's `run`): build the extension for this GPU, run the
# GPU-marked tests first (cuda, triton, extension: what a CPU machine cannot check), then the
# benchmarks and the report, then the rest of the suite, so that a call cut short by the tool's
# limit has already reached what matters most. Leaves at most 9 files in $OUT for benchmarks/results/.
#
#   device run, from the repository root, with carry [".whl"] when diffusers is wanted:
#     bash scripts/gpu_session.sh
#
# The GPU image has torch 2.11 / Triton 3.6 / pytest-benchmark but no diffusers: to compare with
# diffusers' loop, first (on the CPU machine) put its wheel in .whl/ (ignored by git):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 diffusers==0.42.1 -d .whl
# Stages (in this order) have their own time limits; all four may not fit the tool's 10 minutes a
# call: STAGES selects them, e.g. two calls back to back (the build is kept on a warm machine):
#   STAGES="build gputests bench" bash scripts/gpu_session.sh;   STAGES="build tests" bash scripts/gpu_session.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
status=0
STAGES=${STAGES:-build gputests bench tests}
GPU_MARKS="cuda or triton or extension"
want() { case " $STAGES " in *" $1 "*) return 0 ;; esac; return 1; }
stage() { echo "== $1 ($(date +%T))" | tee -a "$OUT/session.log"; }
run() {  # run LIMIT_S LOGFILE CMD... : time-limited, output to OUT/LOGFILE, failures counted
  local limit=$1 logf=$2; shift 2
  timeout "$limit" "$@" > "$OUT/$logf" 2>&1; local rc=$?
  echo "   rc=$rc: $*" | tee -a "$OUT/session.log"; tail -3 "$OUT/$logf" | tee -a "$OUT/session.log"
  [ $rc -eq 0 ] || status=1
}

if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
stage "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  git rev-parse HEAD 2>/dev/null; } | tee -a "$OUT/session.log"

want build && stage "build (pip install --no-build-isolation -e ., CUDA kernels for this GPU)"
want build && run 180 build.log env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    $PY -m pip install --no-build-isolation --no-deps -e .
$PY -c "import ddpm_fast; print(ddpm_fast.backends())" | tee -a "$OUT/session.log"

want gputests && stage "GPU tests first: -m '$GPU_MARKS' (CUDA, Triton at full size, graph capture, sync-free loop)"
want gputests && run 200 gpu_tests.log $PY -m pytest -q tests -p no:cacheprovider -m "$GPU_MARKS"

want bench && stage "benchmarks (ops: bandwidth vs a device copy; sampler: vs diffusers and reference; capture cost)"
want bench && run 240 bench.log $PY -m pytest benchmarks/ --benchmark-only -q --benchmark-json="$OUT/gpu_bench.json"
want bench && run 30 report.log $PY -m benchmarks.report "$OUT/gpu_bench.json"

want tests && stage "the rest of the suite: -m 'not ($GPU_MARKS)'"
want tests && run 200 tests.log $PY -m pytest -q tests -p no:cacheprovider -m "not ($GPU_MARKS)"
stage "done (status $status): commit $OUT/* under benchmarks/results/ with this script's command"
exit $status
