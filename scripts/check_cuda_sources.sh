#!/usr/bin/env bash
# Usage: scripts/check_cuda_sources.sh [OUT_DIR]
# Compiles every csrc/cuda/*.cu with `nvcc -c` for sm_80 and sm_90 (the kernels include no torch
# headers, so this takes seconds per file and needs no CUDA torch). Writes OUT_DIR/<file>.o and
# OUT_DIR/ptxas.log (ptxas -v: registers, spills per kernel). Exits non-zero on the first file that
# does not compile. OUT_DIR defaults to a temporary folder.
# Env: NVCC (default: nvcc on PATH, else $CUDA_HOME/bin/nvcc), CUDA_ARCHS (default "80 90").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
NVCC=${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}
# the C++ standard and nvcc flags of setup.py and CMakeLists.txt (csrc/compile_flags.cmake)
cmake_set() { sed -n "s/^set($1 \(.*\))\$/\1/p" csrc/compile_flags.cmake; }
STD=-std=c++$(cmake_set DDPM_FAST_CXX_STANDARD)
read -r -a CUDA_FLAGS <<< "$(cmake_set DDPM_FAST_CUDA_FLAGS)"
GENCODE=()
for a in ${CUDA_ARCHS:-80 90}; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
: > "$OUT/ptxas.log"
n=0
for f in csrc/cuda/*.cu; do
  name=$(basename "$f" .cu)
  if ! "$NVCC" -c "$STD" "${CUDA_FLAGS[@]}" -Icsrc/include "${GENCODE[@]}" -Xptxas -v "$f" -o "$OUT/$name.o" \
      2> "$OUT/$name.log"; then
    cat "$OUT/$name.log" >&2
    echo "check_cuda_sources: $f does not compile" >&2
    exit 1
  fi
  { echo "### $f"; cat "$OUT/$name.log"; } >> "$OUT/ptxas.log"
  n=$((n + 1))
done
echo "check_cuda_sources: $n CUDA sources compiled for archs ${CUDA_ARCHS:-80 90} ($OUT)"
