// log and sin/cos for Box-Muller in float32 on the only arguments it has: u in (0, 1) and
// theta in [0, 2 pi]. The CUDA kernels use these instead of libm's logf/sinf/cosf, whose sin/cos
// carry a Payne-Hanek reduction for huge arguments (a 32-byte local array per thread in
// `ptxas -v`, make gpu-check) that these angles never need.
//
// Every multiply-add is an explicit fmaf and every other operation (+, -, *, /, sqrtf) is
// correctly rounded on host and device alike, so the host build of this header computes
// bit-for-bit what the kernels compute: tests/test_box_muller_math.py compiles it on the host and
// checks each function on every argument the Philox stream can produce against float64.
//
// Measured error over every argument (2^23 each): log_unit <= 0.86 ulp, cos <= 1.55 ulp, sin <= 1.50 ulp;
// relative errors r <= 1.65 * 2^-24, cos/sin <= 2.2 * 2^-24, so every normal r cos, r sin is within
// 5 * 2^-24 relative error of the float64 Box-Muller on the same float32 u_a and theta
// (docs/ops_contract.md, Noise).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "ddpm_fast/macros.h"

namespace ddpm_fast {

DDPM_FAST_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

DDPM_FAST_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// a * b that nvcc may not fuse with a following add into an fma (the host test compiles with
// -ffp-contract=off; an explicit fmaf is written wherever a fused multiply-add is meant).
DDPM_FAST_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// ln 2 = kLn2Hi + kLn2Lo with kLn2Hi on 17 bits: e * kLn2Hi is exact for |e| <= 127.
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.428606765330187e-06f;
constexpr float kSqrt2 = 1.4142135381698608f;

// Natural log of a normal positive float32 u (Box-Muller's u in (0, 1)): u = m 2^e with m in
// [sqrt(1/2), sqrt(2)], f = m - 1 (exact), s = f / (2 + f), and
//   log(1 + f) = 2 atanh(s) = f - s f + s R(s^2),   R = 2 s^2/3 + 2 s^4/5 + ... + 2 s^10/11,
// with s f = f^2/2 - s f^2/2, so the rounding errors of s and R only enter the small terms.
// |s| <= 0.172: the first omitted term (2 s^12 / 13) is 5e-11 relative.
DDPM_FAST_HD float log_unit(float u) {
  const uint32_t bits = float_bits(u);
  int e = static_cast<int>(bits >> 23) - 127;
  float m = bits_float((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  if (m > kSqrt2) {
    m *= 0.5f;
    e += 1;
  }
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  float R = fmaf(z, 0.18181818723678589f, 0.22222222387790680f);  // 2/11, 2/9
  R = fmaf(z, R, 0.28571429848670959f);                           // 2/7
  R = fmaf(z, R, 0.40000000596046448f);                           // 2/5
  R = fmaf(z, R, 0.66666668653488159f);                           // 2/3
  R = mul_rn(R, z);
  const float hfsq = mul_rn(0.5f * f, f);
  const float ef = static_cast<float>(e);
  // (hfsq - s (hfsq + R)) - e ln2_lo, then f minus that, then + e ln2_hi (exact product)
  const float corr = fmaf(-ef, kLn2Lo, fmaf(-s, hfsq + R, hfsq));
  return fmaf(ef, kLn2Hi, f - corr);
}

// cos and sin of theta in [0, 2 pi]: quadrant q = round(theta / (pi/2)) in {0..4}, remainder
// r = theta - q pi/2 in [-pi/4, pi/4] with pi/2 = A + B + C (A, B short, so q A and q B are
// exact; fmaf makes each step one rounding), then minimax polynomials on [-pi/4, pi/4] (the
// coefficients of sincos_0_2pi in ddpm_fast/ops/triton/philox.py).
DDPM_FAST_HD void sincos_0_2pi(float theta, float& cos_v, float& sin_v) {
  const float q = floorf(fmaf(theta, 0.6366197466850281f, 0.5f));  // 2/pi
  float r = fmaf(-q, 1.5703125f, theta);                           // A = 201 / 128
  r = fmaf(-q, 0.000484466552734375f, r);                          // B = 254 / 2^19
  r = fmaf(-q, -6.397578431460715e-07f, r);                        // C = float32(pi/2 - A - B)
  const float z = r * r;
  float ps = fmaf(z, -0.00019515282474458218f, 0.00833216030150652f);
  ps = fmaf(z, ps, -0.16666655242443085f);
  const float s = fmaf(r * z, ps, r);
  float pc = fmaf(z, 2.44331567955669e-05f, -0.0013887316454201937f);
  pc = fmaf(z, pc, 0.04166664555668831f);
  const float c = fmaf(z * z, pc, fmaf(-0.5f, z, 1.0f));
  const int qi = static_cast<int>(q);
  float cv = (qi & 1) ? s : c;
  float sv = (qi & 1) ? c : s;
  cos_v = ((qi + 1) & 2) ? -cv : cv;  // cos < 0 in quadrants 1, 2
  sin_v = (qi & 2) ? -sv : sv;        // sin < 0 in quadrants 2, 3
}

}  // namespace ddpm_fast
