// The SIMD GroupNorm loops (groupnorm_simd.h), written once over a small vector interface that
// groupnorm_simd.cpp defines per instruction set before including this file inside its namespace:
// kW lanes of VF with splat_f, zero_f, vloadu, vstoreu, vadd, vsub, vmul, vfma, vquot, vmin, vmax,
// vlt, vblend, to_int, from_bits, iadd, ishl, iconst, hsum_double, and for a run's
// last n < kW values a mask type VT with tail_mask(n), vload_tail (zeros past n), vstore_tail and
// vsub_tail (zeros past n).
// No include guard: included once per instruction-set region.

#include "exp_simd_body.h"

// exp(x) for x in [-87, 88] (the caller clamps): cpu_common.h exp_f32's reduction and polynomial
// (exp_simd_body.h), 2^k applied as one exact factor (k stays within [-126, 127]) and no overflow
// or underflow cases to select: ~20 lane operations, 9 fewer than exp_f32's whole range needs, which
// is most of what a SiLU over a GroupNorm's output costs.
inline VF vexp_mid(VF x) {
  const VF magic = splat_f(12582912.0f);
  const VF kf = vsub(vadd(vmul(x, splat_f(1.44269504088896341f)), magic), magic);
  return vmul(exp_reduced(x, kf), from_bits(ishl(iadd(to_int(kf), iconst(127)), 23)));
}

// silu(y) = y / (1 + exp(-y)) (vquot: the division, or an estimate of it, per instruction set).
// exp's argument is clamped to [-87, 88]: below -87, exp(-y) < 2^-125 already rounds 1 + exp(-y) to
// 1; for y < -88 the result is y * 0 (-0, or NaN for -inf), as torch's y / inf, whose exp overflows
// there. A NaN y passes the clamps (min/max return their second operand, here the data, when either
// is NaN).
inline VF vsilu(VF y) {
  const VF den = vadd(splat_f(1.0f), vexp_mid(vmax(splat_f(-87.0f), vmin(splat_f(88.0f), vsub(zero_f(), y)))));
  return vblend(vlt(y, splat_f(-88.0f)), vmul(y, zero_f()), vquot(y, den));
}

inline VF vaffine(VF x, VF center, VF scale, VF shift, bool silu) {
  const VF y = vfma(vsub(x, center), scale, shift);
  return silu ? vsilu(y) : y;
}

// The sums of (v - shift_c) and (v - shift_c)^2 over `channels` runs of `hw` values, shift_c =
// shift[c * shift_stride], in four pairs of accumulator lanes (one pair was bound by the FMA's
// latency: 46 of 90 us of a 40x16x16x16 GroupNorm on the EPYC), flushed to double every
// kMomentChunk elements.
void moments(const float* v, int64_t channels, int64_t hw, const float* shift, int64_t shift_stride, double& s1,
             double& s2) {
  VF a0 = zero_f(), a1 = zero_f(), a2 = zero_f(), a3 = zero_f();
  VF q0 = zero_f(), q1 = zero_f(), q2 = zero_f(), q3 = zero_f();
  int64_t pending = 0;  // elements in the lanes since the last flush
  auto flush = [&]() {
    s1 += hsum_double(vadd(vadd(a0, a1), vadd(a2, a3)));
    s2 += hsum_double(vadd(vadd(q0, q1), vadd(q2, q3)));
    a0 = a1 = a2 = a3 = q0 = q1 = q2 = q3 = zero_f();
    pending = 0;
  };
  for (int64_t c = 0; c < channels; ++c) {
    const float* p = v + c * hw;
    const VF sh = splat_f(shift[c * shift_stride]);
    int64_t i = 0;
    for (; i + 4 * kW <= hw; i += 4 * kW) {
      const VF d0 = vsub(vloadu(p + i), sh), d1 = vsub(vloadu(p + i + kW), sh);
      const VF d2 = vsub(vloadu(p + i + 2 * kW), sh), d3 = vsub(vloadu(p + i + 3 * kW), sh);
      a0 = vadd(a0, d0);
      a1 = vadd(a1, d1);
      a2 = vadd(a2, d2);
      a3 = vadd(a3, d3);
      q0 = vfma(d0, d0, q0);
      q1 = vfma(d1, d1, q1);
      q2 = vfma(d2, d2, q2);
      q3 = vfma(d3, d3, q3);
      if ((pending += 4 * kW) >= kMomentChunk) flush();
    }
    for (; i + kW <= hw; i += kW) {
      const VF d = vsub(vloadu(p + i), sh);
      a1 = vadd(a1, d);
      q1 = vfma(d, d, q1);
      pending += kW;
    }
    if (i < hw) {  // the channel's last hw % kW values: lanes past them hold zeros
      const VT m = tail_mask(hw - i);
      const VF d = vsub_tail(m, vload_tail(m, p + i), sh);
      a2 = vadd(a2, d);
      q2 = vfma(d, d, q2);
      pending += kW;
    }
    if (pending >= kMomentChunk) flush();
  }
  if (pending) flush();
}

// out[c * hw + i] = act((v[c * hw + i] - center[c]) * scale[c] + shift[c]).
void affine(const float* v, float* out, int64_t channels, int64_t hw, const float* center, const float* scale,
            const float* shift, bool silu) {
  for (int64_t c = 0; c < channels; ++c) {
    const float* p = v + c * hw;
    float* o = out + c * hw;
    const VF cc = splat_f(center[c]), ss = splat_f(scale[c]), bb = splat_f(shift[c]);
    int64_t i = 0;
    for (; i + kW <= hw; i += kW) vstoreu(o + i, vaffine(vloadu(p + i), cc, ss, bb, silu));
    if (i < hw) {
      const VT m = tail_mask(hw - i);
      vstore_tail(m, o + i, vaffine(vload_tail(m, p + i), cc, ss, bb, silu));
    }
  }
}
