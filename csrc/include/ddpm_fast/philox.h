// Philox4x32-10 (Salmon et al., SC'11) and the uniform/normal transforms of the ops contract,
// for host (C++) and device (CUDA) alike. Bit-exact twin of ddpm_fast/noise.py:
//   key (k0, k1) = low/high 32 bits of the int64 seed;
//   counter (c0, c1, c2, c3) = (element / 4, global sample, timestep, stream);
//   u = ((w >> 9) + 0.5) * 2^-23 (exact in float32, in (0, 1));
//   Box-Muller on word pairs (0, 1) and (2, 3): r = sqrt(-2 log u_a), theta = 2pi u_b
//   (float32 here, for the CUDA kernels; the CPU kernels: csrc/cpu/philox_simd.cpp, float-float in
//   SIMD lanes (ddpm_fast/box_muller_ff_body.h) or double in the scalar path).
#pragma once

#include <cmath>
#include <cstdint>

#include "ddpm_fast/box_muller_math.h"
#include "ddpm_fast/macros.h"

namespace ddpm_fast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr float kTwoPiF32 = 6.2831854820251465f;    // float32(2 pi), as noise.TWO_PI_F32
constexpr float kTwoPow23Inv = 1.1920928955078125e-07f;  // 2^-23

struct Philox4 {
  uint32_t w[4];
};

DDPM_FAST_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  lo = static_cast<uint32_t>(p);
  hi = static_cast<uint32_t>(p >> 32);
#endif
}

// Ten rounds on counter (c0..c3) with key (k0, k1); returns the four output words.
DDPM_FAST_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                   uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, c0, hi0, lo0);
    mulhilo32(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The key words of a 64-bit seed (two's complement int64).
DDPM_FAST_HD uint32_t seed_lo(int64_t seed) { return static_cast<uint32_t>(static_cast<uint64_t>(seed)); }
DDPM_FAST_HD uint32_t seed_hi(int64_t seed) {
  return static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
}

DDPM_FAST_HD float uniform_from_word(uint32_t w) {
  return (static_cast<float>(w >> 9) + 0.5f) * kTwoPow23Inv;
}

// Box-Muller on one pair of uniforms (float32, as the reference): z_a = r cos(theta), z_b = r sin(theta),
// with the range-restricted log and sin/cos of box_muller_math.h (its header comment: error bound).
DDPM_FAST_HD void box_muller(float ua, float ub, float& za, float& zb) {
  const float r = sqrtf(-2.0f * log_unit(ua));
  float c, s;
  sincos_0_2pi(ub * kTwoPiF32, c, s);
  za = mul_rn(r, c);
  zb = mul_rn(r, s);
}

// The four standard normals of one counter.
DDPM_FAST_HD void normals4(const Philox4& p, float z[4]) {
  box_muller(uniform_from_word(p.w[0]), uniform_from_word(p.w[1]), z[0], z[1]);
  box_muller(uniform_from_word(p.w[2]), uniform_from_word(p.w[3]), z[2], z[3]);
}

}  // namespace ddpm_fast
