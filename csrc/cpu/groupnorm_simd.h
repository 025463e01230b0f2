// The inner loops of the CPU GroupNorm kernel (groupnorm_temb_silu.cpp) in SIMD: AVX-512 or AVX2+FMA,
// chosen once at run time from ATen's CPU capability as philox_simd.h does (ATEN_CPU_CAPABILITY=
// default / avx2 forces a narrower path), or scalar code. All paths accumulate the moments in
// float32 lanes over chunks of at most kMomentChunk elements, each chunk's lanes summed in double,
// and evaluate exp with the same range reduction and polynomial (cpu_common.h exp_f32).
#pragma once

#include <cstdint>

namespace ddpm_fast {
namespace cpu {

// Elements summed in float32 lanes before the partial sums go to double: at most 512 / 16 = 32 (AVX-512)
// or 64 (AVX2) values per lane, so a lane's rounding error stays below ~4e-6 relative even in the
// worst case (the typical one is sqrt of that), whatever the group's size.
constexpr int64_t kMomentChunk = 512;

// Over `channels` consecutive runs of `hw` values (v[c * hw + i]), with shift_c = shift[c * shift_stride]
// (stride 0: one shift for all): s1 += sum(v - shift_c), s2 += sum((v - shift_c)^2), each
// difference rounded to float32.
void groupnorm_moments(const float* v, int64_t channels, int64_t hw, const float* shift, int64_t shift_stride,
                       double& s1, double& s2);

// out[c * hw + i] = y or silu(y) = y / (1 + exp(-y)), y = (v[c * hw + i] - center[c]) * scale[c] + shift[c].
// out may be v.
void groupnorm_affine(const float* v, float* out, int64_t channels, int64_t hw, const float* center,
                      const float* scale, const float* shift, bool silu);

}  // namespace cpu
}  // namespace ddpm_fast
