// Which instruction-set path the run-time dispatched CPU kernels take (philox_simd.cpp,
// groupnorm_simd.cpp, attention.cpp): each compiles its AVX2+FMA and AVX-512 loops under `#pragma GCC
// target` regions when DDPM_FAST_X86_SIMD is defined (GCC on x86-64: clang does not honour the pragma
// and would reject the intrinsics, so a clang build takes the scalar paths), and picks one at run
// time from ATen's CPU capability, which combines cpuid with the ATEN_CPU_CAPABILITY override (so
// ATEN_CPU_CAPABILITY=default / avx2 forces a narrower path; its AVX512 level implies the avx512f the
// regions need).
#pragma once

#include <string>

#include <ATen/Version.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define DDPM_FAST_X86_SIMD 1
#endif

namespace ddpm_fast {
namespace cpu {

enum class SimdPath { kScalar, kAvx2, kAvx512 };

// This process's path, read once.
inline SimdPath simd_path() {
  static const SimdPath path = [] {
#ifdef DDPM_FAST_X86_SIMD
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512") return SimdPath::kAvx512;
    if (cap == "AVX2") return SimdPath::kAvx2;
#endif
    return SimdPath::kScalar;
  }();
  return path;
}

// f() with the code inlined into it compiled for this process's path: for the plain C++ block
// loops of the step kernels (loads, dtype conversions, the NaN check, the element math, stores),
// which GCC vectorises with 4 SSE2 lanes by default. Only what is inlined into the wrapper gets the
// wider ISA; an out-of-line callee keeps its own (the default), so unlike a `#pragma GCC target`
// region no inline function shared with other files is compiled for an ISA the CPU may lack. f must
// be inlined for this to pay: pass a lambda marked DDPM_FAST_INLINE_LAMBDA.
#ifdef DDPM_FAST_X86_SIMD
#define DDPM_FAST_INLINE_LAMBDA __attribute__((always_inline))
template <class F>
__attribute__((target("avx2,fma"))) void run_avx2(const F& f) { f(); }
template <class F>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void run_avx512(const F& f) { f(); }
#else
#define DDPM_FAST_INLINE_LAMBDA
#endif

template <class F>
inline void run_on_simd_path(const F& f) {
#ifdef DDPM_FAST_X86_SIMD
  if (simd_path() == SimdPath::kAvx512) return run_avx512(f);
  if (simd_path() == SimdPath::kAvx2) return run_avx2(f);
#endif
  f();
}

}  // namespace cpu
}  // namespace ddpm_fast
