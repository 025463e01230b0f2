// The SIMD noise generator, written once over a vector ISA and included by philox_simd.cpp inside
// each `#pragma GCC target` region (no include guard: one copy per ISA namespace), so that every
// function here is compiled for that ISA and has internal linkage. The includer defines, in the
// enclosing namespace: kW (lanes), VU / VF (uint32 / float vectors), splat_u, lanes_from, vxor,
// mulhilo (32x32 -> hi, lo per lane), to_float, srl9, splat_f, vadd, vmul, vstore; VD (a double
// vector of kW / 2 lanes), half_to_double (lanes h*kW/2 .. of a float vector), doubles_to_float,
// splat_d, vmul_d, vsqrt_d, vlog_d, vsincos_d.
//
// Layout: lane i of a vector holds counter q + i; its four words give out[4(q + i) + j].

// Philox4x32-10 on kW consecutive counters (q, c1, c2, c3): w[j] = word j of each counter.
inline void philox_words_vec(const PhiloxRun& r, uint64_t q, VU w[4]) {
  VU c0 = lanes_from(static_cast<uint32_t>(q)), c1 = splat_u(r.c1), c2 = splat_u(r.c2), c3 = splat_u(r.c3);
  const VU m0 = splat_u(kPhiloxM0), m1 = splat_u(kPhiloxM1);
  uint32_t k0 = r.k0, k1 = r.k1;
  for (int round = 0; round < 10; ++round) {
    VU hi0, lo0, hi1, lo1;
    mulhilo(c0, m0, hi0, lo0);
    mulhilo(c2, m1, hi1, lo1);
    c0 = vxor(vxor(hi1, c1), splat_u(k0));
    c2 = vxor(vxor(hi0, c3), splat_u(k1));
    c1 = lo1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  w[0] = c0;
  w[1] = c1;
  w[2] = c2;
  w[3] = c3;
}

// u = ((w >> 9) + 0.5) * 2^-23: every step exact in float32, so bitwise the scalar uniform_from_word.
inline VF uniform_vec(VU w) { return vmul(vadd(to_float(srl9(w)), splat_f(0.5f)), splat_f(kTwoPow23Inv)); }

// Box-Muller in place: (ua, ub) -> (r cos(theta), r sin(theta)). theta = ub * float32(2 pi) is
// formed in float32 as the contract says; then r, cos and sin are evaluated in double (Sleef's
// 1-ulp double log and sincos) and each normal is rounded to float32 once, so it is the float32
// rounding of the exact value up to double-precision error (<= 0.5 ulp + 2^-26 ulp).
inline void box_muller_half(VD ua, VD theta, VD& za, VD& zb) {
  const VD r = vsqrt_d(vmul_d(splat_d(-2.0), vlog_d(ua)));
  VD s, c;
  vsincos_d(theta, s, c);
  za = vmul_d(r, c);
  zb = vmul_d(r, s);
}

inline void box_muller_vec(VF& a, VF& b) {
  const VF theta = vmul(b, splat_f(kTwoPiF32));
  VD za[2], zb[2];
  for (int h = 0; h < 2; ++h) box_muller_half(half_to_double(a, h), half_to_double(theta, h), za[h], zb[h]);
  a = doubles_to_float(za[0], za[1]);
  b = doubles_to_float(zb[0], zb[1]);
}

// out[4i + j] = lane i of v[j] for i < count (count <= kW).
inline void store_interleaved(const VF v[4], int64_t count, float* out) {
  alignas(64) float lane[4][kW];
  for (int j = 0; j < 4; ++j) vstore(lane[j], v[j]);
  if (count == kW) {  // constant trip count: the compiler turns this into shuffles
    for (int i = 0; i < kW; ++i)
      for (int j = 0; j < 4; ++j) out[4 * i + j] = lane[j][i];
  } else {
    for (int64_t i = 0; i < count; ++i)
      for (int j = 0; j < 4; ++j) out[4 * i + j] = lane[j][i];
  }
}

// Every counter goes through the vector code (the last vector partly stored), so an element's
// value never depends on how many elements were asked for.
template <bool kNormal>
void fill(const PhiloxRun& r, float* out) {
  for (int64_t i = 0; i < r.nq; i += kW) {
    VU w[4];
    philox_words_vec(r, r.q0 + static_cast<uint64_t>(i), w);
    VF v[4] = {uniform_vec(w[0]), uniform_vec(w[1]), uniform_vec(w[2]), uniform_vec(w[3])};
    if (kNormal) {
      box_muller_vec(v[0], v[1]);
      box_muller_vec(v[2], v[3]);
    }
    store_interleaved(v, std::min<int64_t>(kW, r.nq - i), out + 4 * i);
  }
}
