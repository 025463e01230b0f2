// simd_lanes_avx2.h's vocabulary in 16 lanes of AVX-512F: included inside each file's
// `#pragma GCC target("avx512f,avx2,fma")` region and ISA namespace, no include guard.
constexpr int kW = 16;
using VF = __m512;
using VU = __m512i;
inline VF splat_f(float x) { return _mm512_set1_ps(x); }
inline VF vloadu(const float* p) { return _mm512_loadu_ps(p); }
inline void vstoreu(float* p, VF a) { _mm512_storeu_ps(p, a); }
inline VF vadd(VF a, VF b) { return _mm512_add_ps(a, b); }
inline VF vsub(VF a, VF b) { return _mm512_sub_ps(a, b); }
inline VF vmul(VF a, VF b) { return _mm512_mul_ps(a, b); }
inline VF vfma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VF vmax(VF a, VF b) { return _mm512_max_ps(a, b); }  // b when either is NaN (MAXPS)
inline VU to_int(VF a) { return _mm512_cvttps_epi32(a); }
inline VF from_bits(VU a) { return _mm512_castsi512_ps(a); }
inline VU iadd(VU a, VU b) { return _mm512_add_epi32(a, b); }
inline VU ishl(VU a, int n) { return _mm512_slli_epi32(a, n); }
