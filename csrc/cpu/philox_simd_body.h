// The SIMD noise generator, written once over a vector ISA and included by philox_simd.cpp inside
// each `#pragma GCC target` region (no include guard: one copy per ISA namespace), so that every
// function here is compiled for that ISA and has internal linkage. The includer defines, in the
// enclosing namespace: kW (lanes), VU / VF (uint32 / float vectors), splat_u, lanes_from, vxor,
// mulhilo (32x32 -> hi, lo per lane), to_float, srl9, splat_f, vadd, vmul, vstore, and (included
// before this file) the functions of ddpm_fast/box_muller_ff_body.h over the same VF / VU.
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
// formed in float32 as the contract says; the rest is box_muller_ff_body.h (float-float, each
// normal rounded once: within 0.94 ulp of the float64 evaluation, docs/ops_contract.md, Noise).
inline void box_muller_vec(VF& a, VF& b) {
  ff_box_muller(a, vmul(b, splat_f(kTwoPiF32)), a, b);
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
