// Run-time dispatched CPU noise (philox_simd.h): scalar, AVX2 and AVX-512 paths in one file.
// The SIMD paths are compiled under `#pragma GCC target` regions rather than per-file -m flags:
// only the functions in a region use the wider ISA, they all have internal linkage, and no torch
// header is included inside a region, so no inline function shared with other files is ever
// compiled for an ISA the running CPU may lack. The SIMD paths' Box-Muller is float32 lanes with
// float-float intermediates (ddpm_fast/box_muller_ff_body.h, included in each region): no libm or
// Sleef call, each normal rounded once, within 0.94 ulp of the float64 evaluation. The scalar path
// (no FMA to rely on) evaluates in double with libm: within 0.5 ulp + 2^-20.
#include "philox_simd.h"

#include <algorithm>
#include <cmath>

#include "ddpm_fast/philox.h"
#include "simd_path.h"  // DDPM_FAST_X86_SIMD, simd_path()

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
#pragma GCC push_options
#pragma GCC target("avx2,fma")
// box_muller_ff_body.h's error-free sums and products need every vmul rounded on its own: no
// contraction of a mul and an add into an fma (GCC's default for C++, even with -std=c++20).
#pragma GCC optimize("fp-contract=off")
namespace avx2 {
#include "simd_lanes_avx2.h"
inline VU splat_u(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
// Lane L holds counter q + {0, 2, 4, 6, 1, 3, 5, 7}[L]: the order store_words writes without
// crossing the two 128-bit halves (counters 2k, 2k + 1 sit in lane k of each half).
inline VU lanes_from(uint32_t q) { return _mm256_add_epi32(splat_u(q), _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)); }
inline VU vxor(VU a, VU b) { return _mm256_xor_si256(a, b); }
inline VU srl9(VU a) { return _mm256_srli_epi32(a, 9); }
// for philox_words_vec: a shuffle (not a 64-bit shift) moves the odd lanes down, as shifts have
// one pipe on Zen2
inline VU mul_even(VU a, VU m) { return _mm256_mul_epu32(a, m); }
inline VU odd_down(VU a) { return _mm256_shuffle_epi32(a, 0xF5); }  // lanes (1, 1, 3, 3) per 128 bits
inline VU merge_even_odd(VU e, VU o) { return _mm256_blend_epi32(e, _mm256_shuffle_epi32(o, 0xA0), 0xAA); }
inline VU kept_apart(VU a) {  // a, as a value GCC cannot look into (no instruction)
  asm("" : "+x"(a));
  return a;
}
inline VF to_float(VU a) { return _mm256_cvtepi32_ps(a); }  // int32 lanes, exact below 2^24
// out[4i + j] = word j of counter q + i (lanes_from's order): a 4x8 transpose within 128-bit halves,
// t = (v0 v1), (v2 v3) pairs, u = their 4-word groups: u0 = counters 0 | 1, u1 = 2 | 3, ...
inline void store_words(const VF v[4], float* out) {
  const VF t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
  const VF t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
  _mm256_storeu_ps(out, _mm256_shuffle_ps(t0, t2, 0x44));
  _mm256_storeu_ps(out + 8, _mm256_shuffle_ps(t0, t2, 0xEE));
  _mm256_storeu_ps(out + 16, _mm256_shuffle_ps(t1, t3, 0x44));
  _mm256_storeu_ps(out + 24, _mm256_shuffle_ps(t1, t3, 0xEE));
}
// for box_muller_ff_body.h
inline VF vdiv(VF a, VF b) { return _mm256_div_ps(a, b); }
inline VF vsqrt(VF a) { return _mm256_sqrt_ps(a); }
inline VF vfloor(VF a) { return _mm256_floor_ps(a); }
// a negation GCC sees as one (not an xor with -0.0), so that it folds fma(-a, b, c) and fma(a, b, -c)
// into vfnmadd / vfmsub: the same roundings (negation is exact), one op and one latency less each
inline VF vneg(VF a) { return (__m256)(-(__v8sf)a); }
inline VU as_bits(VF a) { return _mm256_castps_si256(a); }
inline VU isub(VU a, VU b) { return _mm256_sub_epi32(a, b); }
inline VU iand(VU a, VU b) { return _mm256_and_si256(a, b); }
inline VU isra23(VU a) { return _mm256_srai_epi32(a, 23); }
inline VF vxor_f(VF a, VU s) { return _mm256_xor_ps(a, _mm256_castsi256_ps(s)); }
inline VF vsel_odd(VU q, VF a, VF b) { return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(_mm256_slli_epi32(q, 31))); }
#include "ddpm_fast/box_muller_ff_body.h"
#include "philox_simd_body.h"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#pragma GCC optimize("fp-contract=off")  // as in the AVX2 region
// GCC 12's avx512fintrin.h seeds _mm512_undefined_* with a self-initialisation that -Wall reports
// as "may be used uninitialized" at every intrinsic using it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {
#include "simd_lanes_avx512.h"
inline VU splat_u(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
inline VU lanes_from(uint32_t q) {
  return _mm512_add_epi32(splat_u(q), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
inline VU vxor(VU a, VU b) { return _mm512_xor_si512(a, b); }
inline VU srl9(VU a) { return _mm512_srli_epi32(a, 9); }
inline VU mul_even(VU a, VU m) { return _mm512_mul_epu32(a, m); }  // as the avx2:: ones
inline VU odd_down(VU a) { return _mm512_shuffle_epi32(a, static_cast<_MM_PERM_ENUM>(0xF5)); }
inline VU merge_even_odd(VU e, VU o) {
  return _mm512_mask_blend_epi32(0xAAAA, e, _mm512_shuffle_epi32(o, static_cast<_MM_PERM_ENUM>(0xA0)));
}
inline VU kept_apart(VU a) {
  asm("" : "+v"(a));  // "v": any of zmm0-31
  return a;
}
inline VF to_float(VU a) { return _mm512_cvtepi32_ps(a); }
// out[4i + j] = lane i of v[j] (lanes_from's plain order); constant trip counts: GCC shuffles
inline void store_words(const VF v[4], float* out) {
  alignas(64) float lane[4][kW];
  for (int j = 0; j < 4; ++j) _mm512_store_ps(lane[j], v[j]);
  for (int i = 0; i < kW; ++i)
    for (int j = 0; j < 4; ++j) out[4 * i + j] = lane[j][i];
}
// for box_muller_ff_body.h (avx512f only: no avx512dq float xor, so sign flips go through the bits)
inline VF vdiv(VF a, VF b) { return _mm512_div_ps(a, b); }
inline VF vsqrt(VF a) { return _mm512_sqrt_ps(a); }
inline VF vfloor(VF a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
inline VU as_bits(VF a) { return _mm512_castps_si512(a); }
inline VF vneg(VF a) { return from_bits(_mm512_xor_si512(as_bits(a), splat_u(0x80000000u))); }
inline VU isub(VU a, VU b) { return _mm512_sub_epi32(a, b); }
inline VU iand(VU a, VU b) { return _mm512_and_si512(a, b); }
inline VU isra23(VU a) { return _mm512_srai_epi32(a, 23); }
inline VF vxor_f(VF a, VU s) { return from_bits(_mm512_xor_si512(as_bits(a), s)); }
inline VF vsel_odd(VU q, VF a, VF b) { return _mm512_mask_blend_ps(_mm512_test_epi32_mask(q, splat_u(1u)), b, a); }
#include "ddpm_fast/box_muller_ff_body.h"
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

Path choose_path() {
#ifdef DDPM_FAST_X86_SIMD
  if (simd_path() == SimdPath::kAvx512) return {&avx512::fill<false>, &avx512::fill<true>, "avx512"};
  if (simd_path() == SimdPath::kAvx2) return {&avx2::fill<false>, &avx2::fill<true>, "avx2"};
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
