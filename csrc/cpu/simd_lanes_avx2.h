// The float32 lane vocabulary the SIMD CPU kernels share (philox_simd.cpp, groupnorm_simd.cpp,
// attention.cpp), 8 lanes of AVX2+FMA. Included inside each file's `#pragma GCC target("avx2,fma")`
// region and ISA namespace, before the file's own helpers and its `_body.h`: no include guard, no
// torch header (see simd_path.h). Its AVX-512 twin: simd_lanes_avx512.h.
constexpr int kW = 8;
using VF = __m256;
using VU = __m256i;
inline VF splat_f(float x) { return _mm256_set1_ps(x); }
inline VF vloadu(const float* p) { return _mm256_loadu_ps(p); }
inline void vstoreu(float* p, VF a) { _mm256_storeu_ps(p, a); }
inline VF vadd(VF a, VF b) { return _mm256_add_ps(a, b); }
inline VF vsub(VF a, VF b) { return _mm256_sub_ps(a, b); }
inline VF vmul(VF a, VF b) { return _mm256_mul_ps(a, b); }
inline VF vfma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VF vmax(VF a, VF b) { return _mm256_max_ps(a, b); }  // b when either is NaN (MAXPS)
inline VU to_int(VF a) { return _mm256_cvttps_epi32(a); }
inline VF from_bits(VU a) { return _mm256_castsi256_ps(a); }
inline VU iadd(VU a, VU b) { return _mm256_add_epi32(a, b); }
inline VU ishl(VU a, int n) { return _mm256_slli_epi32(a, n); }
