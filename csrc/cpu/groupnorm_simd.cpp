// Run-time dispatched GroupNorm loops (groupnorm_simd.h): scalar, AVX2+FMA and AVX-512 paths in one
// file, under `#pragma GCC target` regions as in philox_simd.cpp (and for its reasons: only the
// functions in a region use the wider ISA, all have internal linkage, no torch header is included
// inside a region). The loops these replace were plain C++ left to the auto-vectoriser: a double
// reduction bound by its add latency and a SiLU loop it did not vectorise. GroupNorm + temb + SiLU
// on the 2-core EPYC (AVX-512, one thread, load ~2): 40x32x16x16 493 -> 184 us (torch's group_norm,
// add and silu: 278 us), 40x32x4x4 76 -> 38 us (torch 36 us).
#include "groupnorm_simd.h"

#include "cpu_common.h"
#include "simd_path.h"  // DDPM_FAST_X86_SIMD, simd_path()

namespace ddpm_fast {
namespace cpu {
namespace {

// --- scalar: float32 differences, double sums; cpu_common.h's exp_f32 ---------------------------
void moments_scalar(const float* v, int64_t channels, int64_t hw, const float* shift, int64_t shift_stride,
                    double& s1, double& s2) {
  double a = 0.0, q = 0.0;
  for (int64_t c = 0; c < channels; ++c) {
    const float sh = shift[c * shift_stride];
    for (int64_t i = 0; i < hw; ++i) {
      const float d = v[c * hw + i] - sh;
      a += d;
      q += static_cast<double>(d) * d;
    }
  }
  s1 += a;
  s2 += q;
}

void affine_scalar(const float* v, float* out, int64_t channels, int64_t hw, const float* center, const float* scale,
                   const float* shift, bool silu) {
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = c * hw; i < (c + 1) * hw; ++i) {
      const float y = (v[i] - center[c]) * scale[c] + shift[c];
      out[i] = silu ? silu_f32(y) : y;
    }
  }
}

#ifdef DDPM_FAST_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "simd_lanes_avx2.h"
using VM = __m256;  // compare results: all-ones lanes
inline VF zero_f() { return _mm256_setzero_ps(); }
// a / b: the division itself (the 12-bit reciprocal estimate needs two Newton steps for 1 ulp)
inline VF vquot(VF a, VF b) { return _mm256_div_ps(a, b); }
inline VF vmin(VF a, VF b) { return _mm256_min_ps(a, b); }
inline VM vlt(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
inline VF vblend(VM m, VF a, VF b) { return _mm256_blendv_ps(b, a, m); }  // m ? a : b
inline VU iconst(int32_t x) { return _mm256_set1_epi32(x); }
using VT = __m256i;  // tail mask: all-ones in the lanes below n
inline VT tail_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline VF vload_tail(VT m, const float* p) { return _mm256_maskload_ps(p, m); }
inline void vstore_tail(VT m, float* p, VF a) { _mm256_maskstore_ps(p, m, a); }
inline VF vsub_tail(VT m, VF a, VF b) { return _mm256_and_ps(_mm256_sub_ps(a, b), _mm256_castsi256_ps(m)); }
inline double hsum_double(VF a) {  // the lanes widened to double, then summed pairwise
  const __m256d w = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(w), _mm256_extractf128_pd(w, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
#include "groupnorm_simd_body.h"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's avx512fintrin.h: see philox_simd.cpp
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {
#include "simd_lanes_avx512.h"
using VM = __mmask16;
inline VF zero_f() { return _mm512_setzero_ps(); }
// a / b as a * (1 / b), 1 / b from the 14-bit estimate and one Newton step (error ~2^-28 before the
// last rounding): the division's throughput bound the SiLU loop on the EPYC (Zen 4 splits a 512-bit
// divide in two); b is finite and >= 1 here (vsilu), so the step never meets inf * 0.
inline VF vquot(VF a, VF b) {
  VF r = _mm512_rcp14_ps(b);
  r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(b, r, _mm512_set1_ps(1.0f)), r);
  return _mm512_mul_ps(a, r);
}
inline VF vmin(VF a, VF b) { return _mm512_min_ps(a, b); }  // as MINPS: b when either is NaN
inline VM vlt(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
inline VF vblend(VM m, VF a, VF b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
inline VU iconst(int32_t x) { return _mm512_set1_epi32(x); }
using VT = __mmask16;
inline VT tail_mask(int64_t n) { return static_cast<VT>((1u << n) - 1u); }
inline VF vload_tail(VT m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
inline void vstore_tail(VT m, float* p, VF a) { _mm512_mask_storeu_ps(p, m, a); }
inline VF vsub_tail(VT m, VF a, VF b) { return _mm512_maskz_sub_ps(m, a, b); }
inline double hsum_double(VF a) {  // the lanes widened to double, then summed pairwise
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(a)), _mm512_cvtps_pd(hi)));
}
#include "groupnorm_simd_body.h"
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif  // DDPM_FAST_X86_SIMD

using Moments = void (*)(const float*, int64_t, int64_t, const float*, int64_t, double&, double&);
using Affine = void (*)(const float*, float*, int64_t, int64_t, const float*, const float*, const float*, bool);
struct Path {
  Moments moments;
  Affine affine;
};

Path choose_path() {
#ifdef DDPM_FAST_X86_SIMD
  if (simd_path() == SimdPath::kAvx512) return {&avx512::moments, &avx512::affine};
  if (simd_path() == SimdPath::kAvx2) return {&avx2::moments, &avx2::affine};
#endif
  return {&moments_scalar, &affine_scalar};
}

const Path& path() {
  static const Path p = choose_path();
  return p;
}

}  // namespace

void groupnorm_moments(const float* v, int64_t channels, int64_t hw, const float* shift, int64_t shift_stride,
                       double& s1, double& s2) {
  path().moments(v, channels, hw, shift, shift_stride, s1, s2);
}
void groupnorm_affine(const float* v, float* out, int64_t channels, int64_t hw, const float* center,
                      const float* scale, const float* shift, bool silu) {
  path().affine(v, out, channels, hw, center, scale, shift, silu);
}

}  // namespace cpu
}  // namespace ddpm_fast
