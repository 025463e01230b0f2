// Box-Muller in float32 lanes with float-float intermediates: the CPU SIMD paths' normals
// (csrc/cpu/philox_simd.cpp) and their host build (tests/cpp/box_muller_host.cpp, which checks
// every argument the stream can produce). Written once over a lane type and included inside a
// namespace that defines it (no include guard: one copy per ISA namespace, so every function here
// is compiled for that ISA and has that namespace's internal linkage). The includer defines:
//   VF (float lanes), VU (uint32 lanes), splat_f, splat_u, vadd, vsub, vmul, vdiv, vfma (one
//   rounding), vsqrt, vfloor, vneg, as_bits / from_bits (reinterpret), iadd, isub, iand, isra23
//   (arithmetic >> 23), ishl (<<), to_float (int32 -> float), to_int (float -> int32, truncating),
//   vxor_f (float ^ bits), vsel_odd(q, a, b) (a where int lane q is odd, else b).
// Every operation is a correctly rounded IEEE float32 operation or fma, so every instantiation
// computes the same bits.
//
// Why float-float: a float32 r and float32 cos theta carry up to 2^-24 relative rounding error
// each, and the product's rounding adds 0.5 ulp, i.e. up to 2.5 ulp (a normal of mantissa near 2
// has |z| / ulp(z) close to 2^24). Here r = sqrt(-2 log u) and cos/sin theta are kept as
// unevaluated sums hi + lo, within 0.11 * 2^-24 (r) and 0.33 * 2^-24 (cos, sin) relative error
// over every u and every theta of the stream (the host build, tests/test_box_muller_math.py), and
// each normal is one fma, fma(r_hi, c_hi, r_hi c_lo + r_lo c_hi): rounded once, so
//   |z - exact| <= 0.5 ulp + 2^24 (e_r + e_cs + e_r e_cs) ulp + (< 1e-5 ulp: the small terms) < 0.94 ulp
// (docs/ops_contract.md, Noise, states the resulting bound).

// (hi, lo) = a + b exactly, given |a| >= |b| or a == 0 (Dekker's Fast2Sum).
inline void ff_fast_two_sum(VF a, VF b, VF& hi, VF& lo) {
  hi = vadd(a, b);
  lo = vsub(b, vsub(hi, a));
}

// (hi, lo) = a + b exactly, any a, b (Knuth's 2Sum).
inline void ff_two_sum(VF a, VF b, VF& hi, VF& lo) {
  hi = vadd(a, b);
  const VF bb = vsub(hi, a);
  lo = vadd(vsub(a, vsub(hi, bb)), vsub(b, bb));
}

// -2 log u = hi + lo for a normal float u in (0, 1). u = m 2^e with m in [sqrt(1/2), sqrt(2))
// (the exponent split of musl's logf: bits - bits(sqrt(1/2)) carries into the exponent exactly
// when m >= sqrt(2)), f = m - 1 (exact), s = f / (2 + f), and (fdlibm's identity)
//   log(1 + f) = 2 atanh(s) = f - f^2/2 + s (f^2/2 + R(s^2)),  R = 2z/3 + 2z^2/5 + ... + 2z^5/11,
// with f^2/2 = h + h_e exact (fma), f - h and e ln2_hi + (f - h) exact sums, so only the small
// term s (h + R) - h_e (<= 0.03 |log u|) and e ln2_lo carry rounding error.
inline void ff_neg2log(VF u, VF& hi, VF& lo) {
  constexpr uint32_t kSqrtHalfBits = 0x3f3504f3u;
  const VU ix = isub(as_bits(u), splat_u(kSqrtHalfBits));
  const VF e = to_float(isra23(ix));
  const VF m = from_bits(iadd(iand(ix, splat_u(0x007fffffu)), splat_u(kSqrtHalfBits)));
  const VF f = vsub(m, splat_f(1.0f));
  const VF s = vdiv(f, vadd(splat_f(2.0f), f));
  const VF z = vmul(s, s);
  VF R = vfma(z, splat_f(0.18181818723678589f), splat_f(0.22222222387790680f));  // 2/11, 2/9
  R = vfma(z, R, splat_f(0.28571429848670959f));                                 // 2/7
  R = vfma(z, R, splat_f(0.40000000596046448f));                                 // 2/5
  R = vfma(z, R, splat_f(0.66666668653488159f));                                 // 2/3
  R = vmul(R, z);
  const VF hf = vmul(splat_f(0.5f), f);           // exact
  const VF h = vmul(hf, f);
  const VF h_e = vfma(hf, f, vneg(h));            // f^2/2 - h, exact
  const VF small = vfma(s, vadd(h, R), vneg(h_e));
  VF p_hi, p_lo;
  ff_fast_two_sum(f, vneg(h), p_hi, p_lo);        // |f| >= f^2/2
  VF l_hi, t;
  ff_fast_two_sum(vmul(e, splat_f(0.693145751953125f)), p_hi, l_hi, t);  // e ln2_hi exact (17 bits)
  const VF l_lo = vadd(vadd(t, p_lo), vfma(e, splat_f(1.428606765330187e-06f), small));  // + e ln2_lo
  VF n_hi, n_lo;
  ff_fast_two_sum(l_hi, l_lo, n_hi, n_lo);  // normalised: the Newton step of ff_sqrt needs |lo| << |hi|
  hi = vmul(splat_f(-2.0f), n_hi);
  lo = vmul(splat_f(-2.0f), n_lo);
}

// sqrt(a_hi + a_lo) = r_hi + r_lo for a_hi > 0: y = sqrt(a_hi) correctly rounded, whose residual
// a_hi - y^2 is exact in one fma; one Newton step gives the low part.
inline void ff_sqrt(VF a_hi, VF a_lo, VF& r_hi, VF& r_lo) {
  r_hi = vsqrt(a_hi);
  const VF res = vadd(vfma(vneg(r_hi), r_hi, a_hi), a_lo);
  r_lo = vdiv(res, vadd(r_hi, r_hi));
}

// cos and sin of theta in [0, 2 pi] as hi + lo pairs of the reduced argument's, and the quadrant
// q in {0..4} (as int lanes): cos theta = +-(q odd ? s : c), sin theta = +-(q odd ? c : s).
// theta = q pi/2 + r, |r| <= pi/4: pi/2 = A + B + C + D with A, B on 8 bits (q A, q B exact and
// theta - q A - q B exact) and C on 21 bits (q C exact), so r = (theta - q A - q B) - q C is an
// exact 2Sum, - q D (~1e-13) added to its low part. Taylor series to r^9 (sin) and r^10 (cos):
// the first omitted terms are below 3e-9 and 1.2e-10 of the result.
inline void ff_sincos_reduced(VF theta, VF& c_hi, VF& c_lo, VF& s_hi, VF& s_lo, VU& q) {
  const VF qf = vfloor(vfma(theta, splat_f(0.6366197466850281f), splat_f(0.5f)));  // 2/pi
  const VF nq = vneg(qf);
  VF r2 = vfma(nq, splat_f(1.5703125f), theta);                  // A = 201 / 128
  r2 = vfma(nq, splat_f(0.000484466552734375f), r2);             // B = 254 / 2^19
  VF r_hi, r_lo;
  ff_two_sum(r2, vmul(qf, splat_f(6.39757672615815e-07f)), r_hi, r_lo);  // -C, 21 bits
  r_lo = vfma(qf, splat_f(1.6513995574653217e-13f), r_lo);               // -D
  q = to_int(qf);
  const VF z = vmul(r_hi, r_hi);
  const VF z_e = vfma(r_hi, r_hi, vneg(z));  // r_hi^2 - z, exact
  // cos r = 1 - r^2/2 + r^4 Pc(r^2), r^2 = z + z_e + 2 r_hi r_lo (+ r_lo^2, below 2^-48)
  VF pc = vfma(z, splat_f(-2.755731922398589e-07f), splat_f(2.48015873015873e-05f));  // -1/10!, 1/8!
  pc = vfma(z, pc, splat_f(-0.001388888888888889f));                                 // -1/6!
  pc = vfma(z, pc, splat_f(0.041666666666666664f));                                  // 1/4!
  ff_fast_two_sum(splat_f(1.0f), vmul(splat_f(-0.5f), z), c_hi, c_lo);
  const VF c_tail = vfma(vmul(z, z), pc, vfma(vneg(r_hi), r_lo, vmul(splat_f(-0.5f), z_e)));
  ff_fast_two_sum(c_hi, vadd(c_lo, c_tail), c_hi, c_lo);  // normalised (|c_tail| < 0.016): |c_lo| <= 2^-24 |c_hi|
  // sin r = r + r^3 Ps(r^2), the r_lo part through d sin / dr = cos r
  VF ps = vfma(z, splat_f(2.755731922398589e-06f), splat_f(-0.0001984126984126984f));  // 1/9!, -1/7!
  ps = vfma(z, ps, splat_f(0.008333333333333333f));                                   // 1/5!
  ps = vfma(z, ps, splat_f(-0.16666666666666666f));                                   // -1/3!
  ff_fast_two_sum(r_hi, vmul(vmul(r_hi, z), ps), s_hi, s_lo);                         // |r^3/6| < |r|
  s_lo = vfma(r_lo, c_hi, s_lo);
}

// cos theta = cos_hi + cos_lo, sin theta = sin_hi + sin_lo for theta in [0, 2 pi]: the reduced
// pair, swapped in odd quadrants, with the quadrant's signs (cos < 0 in quadrants 1, 2; sin < 0
// in quadrants 2, 3; flipping a sign commutes with every rounding).
inline void ff_cos_sin(VF theta, VF& cos_hi, VF& cos_lo, VF& sin_hi, VF& sin_lo) {
  VF c_hi, c_lo, s_hi, s_lo;
  VU q;
  ff_sincos_reduced(theta, c_hi, c_lo, s_hi, s_lo, q);
  const VU cos_sign = ishl(iand(iadd(q, splat_u(1u)), splat_u(2u)), 30);
  const VU sin_sign = ishl(iand(q, splat_u(2u)), 30);
  cos_hi = vxor_f(vsel_odd(q, s_hi, c_hi), cos_sign);
  cos_lo = vxor_f(vsel_odd(q, s_lo, c_lo), cos_sign);
  sin_hi = vxor_f(vsel_odd(q, c_hi, s_hi), sin_sign);
  sin_lo = vxor_f(vsel_odd(q, c_lo, s_lo), sin_sign);
}

// sqrt(-2 log u) = r_hi + r_lo.
inline void ff_radius(VF u, VF& r_hi, VF& r_lo) {
  VF l_hi, l_lo;
  ff_neg2log(u, l_hi, l_lo);
  ff_sqrt(l_hi, l_lo, r_hi, r_lo);
}

// (r hi + lo) (c hi + lo) rounded once: fma(r_hi, c_hi, r_hi c_lo + r_lo c_hi); r_lo c_lo < 2^-47 of it.
inline VF ff_product(VF r_hi, VF r_lo, VF c_hi, VF c_lo) {
  return vfma(r_hi, c_hi, vfma(r_hi, c_lo, vmul(r_lo, c_hi)));
}

// One Box-Muller pair: (u_a, theta) -> (r cos theta, r sin theta), each rounded once.
inline void ff_box_muller(VF ua, VF theta, VF& za, VF& zb) {
  VF r_hi, r_lo, c_hi, c_lo, s_hi, s_lo;
  ff_radius(ua, r_hi, r_lo);
  ff_cos_sin(theta, c_hi, c_lo, s_hi, s_lo);
  za = ff_product(r_hi, r_lo, c_hi, c_lo);
  zb = ff_product(r_hi, r_lo, s_hi, s_lo);
}
