// Run-time dispatched CPU noise (philox_simd.h): scalar, AVX2 and AVX-512 paths in one file.
// The SIMD paths are compiled under `#pragma GCC target` regions rather than per-file -m flags:
// only the functions in a region use the wider ISA, they all have internal linkage, and no torch
// header is included inside a region, so no inline function shared with other files is ever
// compiled for an ISA the running CPU may lack. Sleef (exported by libtorch_cpu, which ATen's own
// Vectorized<double>::log uses) supplies the 1-ulp vector log and sincos, evaluated in double so
// that each normal is rounded to float32 once (philox_simd_body.h, box_muller_vec).
#include "philox_simd.h"

#include <algorithm>
#include <cmath>
#include <string>

#include <ATen/Version.h>

#include "ddpm_fast/philox.h"

// GCC only: clang does not honour `#pragma GCC target` (it would reject the intrinsics below), so
// a clang build takes the scalar path.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define DDPM_FAST_X86_SIMD 1
#endif

namespace ddpm_fast {
namespace cpu {
namespace {

// --- scalar: philox.h's generator, Box-Muller in double with libm (as the vector paths) ---------
void uniforms_scalar(const PhiloxRun& r, float* out) {
  for (int64_t i = 0; i < r.nq; ++i) {
    const Philox4 p = philox4x32_10(static_cast<uint32_t>(r.q0 + static_cast<uint64_t>(i)), r.c1, r.c2, r.c3,
                                    r.k0, r.k1);
    for (int j = 0; j < 4; ++j) out[4 * i + j] = uniform_from_word(p.w[j]);
  }
}

void normals_scalar(const PhiloxRun& r, float* out) {
  uniforms_scalar(r, out);
  for (int64_t i = 0; i < 4 * r.nq; i += 2) {
    const double rad = std::sqrt(-2.0 * std::log(static_cast<double>(out[i])));
    const double theta = static_cast<double>(out[i + 1] * kTwoPiF32);  // the float32 angle
    out[i] = static_cast<float>(rad * std::cos(theta));
    out[i + 1] = static_cast<float>(rad * std::sin(theta));
  }
}

#ifdef DDPM_FAST_X86_SIMD
// Sleef's vector functions as libtorch_cpu exports them (sleef.h declares them only when the
// whole file is compiled with -mavx2 / -mavx512f). Declared inside the target regions so that
// vectors pass in registers.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
struct SleefD4x2 {
  __m256d x, y;
};
extern "C" __m256d Sleef_logd4_u35avx2(__m256d);
extern "C" SleefD4x2 Sleef_sincosd4_u35avx2(__m256d);

namespace avx2 {
constexpr int kW = 8;
using VU = __m256i;
using VF = __m256;
inline VU splat_u(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
inline VU lanes_from(uint32_t q) { return _mm256_add_epi32(splat_u(q), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
inline VU vxor(VU a, VU b) { return _mm256_xor_si256(a, b); }
inline VU srl9(VU a) { return _mm256_srli_epi32(a, 9); }
// a * m per 32-bit lane: _mm256_mul_epu32 multiplies the even lanes into 64-bit products; the odd
// lanes are shifted down first. m is a broadcast constant, so its even lanes serve both.
inline void mulhilo(VU a, VU m, VU& hi, VU& lo) {
  const VU even = _mm256_mul_epu32(a, m);
  const VU odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}
inline VF to_float(VU a) { return _mm256_cvtepi32_ps(a); }  // exact: a < 2^23
inline VF splat_f(float x) { return _mm256_set1_ps(x); }
inline VF vadd(VF a, VF b) { return _mm256_add_ps(a, b); }
inline VF vmul(VF a, VF b) { return _mm256_mul_ps(a, b); }
inline void vstore(float* p, VF a) { _mm256_store_ps(p, a); }
using VD = __m256d;
inline VD half_to_double(VF a, int h) {
  return _mm256_cvtps_pd(h == 0 ? _mm256_castps256_ps128(a) : _mm256_extractf128_ps(a, 1));
}
inline VF doubles_to_float(VD lo, VD hi) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}
inline VD splat_d(double x) { return _mm256_set1_pd(x); }
inline VD vmul_d(VD a, VD b) { return _mm256_mul_pd(a, b); }
inline VD vsqrt_d(VD a) { return _mm256_sqrt_pd(a); }
inline VD vlog_d(VD a) { return Sleef_logd4_u35avx2(a); }
inline void vsincos_d(VD a, VD& s, VD& c) {
  const SleefD4x2 sc = Sleef_sincosd4_u35avx2(a);
  s = sc.x;
  c = sc.y;
}
#include "philox_simd_body.h"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's avx512fintrin.h seeds _mm512_undefined_* with a self-initialisation that -Wall reports
// as "may be used uninitialized" at every intrinsic using it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
struct SleefD8x2 {
  __m512d x, y;
};
extern "C" __m512d Sleef_logd8_u35avx512f(__m512d);
extern "C" SleefD8x2 Sleef_sincosd8_u35avx512f(__m512d);

namespace avx512 {
constexpr int kW = 16;
using VU = __m512i;
using VF = __m512;
inline VU splat_u(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
inline VU lanes_from(uint32_t q) {
  return _mm512_add_epi32(splat_u(q), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
inline VU vxor(VU a, VU b) { return _mm512_xor_si512(a, b); }
inline VU srl9(VU a) { return _mm512_srli_epi32(a, 9); }
inline void mulhilo(VU a, VU m, VU& hi, VU& lo) {  // as avx2::mulhilo
  const VU even = _mm512_mul_epu32(a, m);
  const VU odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}
inline VF to_float(VU a) { return _mm512_cvtepi32_ps(a); }
inline VF splat_f(float x) { return _mm512_set1_ps(x); }
inline VF vadd(VF a, VF b) { return _mm512_add_ps(a, b); }
inline VF vmul(VF a, VF b) { return _mm512_mul_ps(a, b); }
inline void vstore(float* p, VF a) { _mm512_store_ps(p, a); }
using VD = __m512d;
inline VD half_to_double(VF a, int h) {
  const __m512d bits = _mm512_castps_pd(a);
  return _mm512_cvtps_pd(_mm256_castpd_ps(h == 0 ? _mm512_castpd512_pd256(bits) : _mm512_extractf64x4_pd(bits, 1)));
}
inline VF doubles_to_float(VD lo, VD hi) {
  const __m512d joined = _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm512_cvtpd_ps(lo))),
                                            _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1);
  return _mm512_castpd_ps(joined);
}
inline VD splat_d(double x) { return _mm512_set1_pd(x); }
inline VD vmul_d(VD a, VD b) { return _mm512_mul_pd(a, b); }
inline VD vsqrt_d(VD a) { return _mm512_sqrt_pd(a); }
inline VD vlog_d(VD a) { return Sleef_logd8_u35avx512f(a); }
inline void vsincos_d(VD a, VD& s, VD& c) {
  const SleefD8x2 sc = Sleef_sincosd8_u35avx512f(a);
  s = sc.x;
  c = sc.y;
}
#include "philox_simd_body.h"
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif  // DDPM_FAST_X86_SIMD

using Fill = void (*)(const PhiloxRun&, float*);
struct Path {
  Fill uniforms, normals;
  const char* name;
};

// ATen's capability ("AVX512", "AVX2", "DEFAULT", ...) already combines cpuid with the
// ATEN_CPU_CAPABILITY override; its AVX512 level implies the avx512f this file needs.
Path choose_path() {
#ifdef DDPM_FAST_X86_SIMD
  const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512") return {&avx512::fill<false>, &avx512::fill<true>, "avx512"};
  if (cap == "AVX2") return {&avx2::fill<false>, &avx2::fill<true>, "avx2"};
#endif
  return {&uniforms_scalar, &normals_scalar, "scalar"};
}

const Path& path() {
  static const Path p = choose_path();
  return p;
}

}  // namespace

void philox_uniforms(const PhiloxRun& run, float* out) { path().uniforms(run, out); }
void philox_normals(const PhiloxRun& run, float* out) { path().normals(run, out); }
const char* philox_simd_path() { return path().name; }

}  // namespace cpu
}  // namespace ddpm_fast
