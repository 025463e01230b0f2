// The SIMD noise generator, written once over a vector ISA and included by philox_simd.cpp inside
// each `#pragma GCC target` region (no include guard: one copy per ISA namespace), so that every
// function here is compiled for that ISA and has internal linkage. The includer defines, in the
// enclosing namespace: kW (lanes), VU / VF (uint32 / float vectors), splat_u, lanes_from, vxor,
// mulhilo (32x32 -> hi, lo per lane), to_float, srl9, splat_f, vadd, vmul, vstore, and (included
// before this file) the functions of ddpm_fast/box_muller_ff_body.h over the same VF / VU.
//
// Layout: lane i of a vector holds counter q + i; its four words give out[4(q + i) + j].

// Philox4x32-10 on kN * kW consecutive counters (q, c1, c2, c3): w[n][j] = word j of counters
// q + n kW + lane. kN independent vectors per round: one vector's ten rounds are a chain of
// dependent multiplies (latency bound); two interleaved fill the multiplier.
template <int kN>
inline void philox_words_vec(const PhiloxRun& r, uint64_t q, VU w[kN][4]) {
  VU c0[kN], c1[kN], c2[kN], c3[kN];
  for (int n = 0; n < kN; ++n) {
    c0[n] = lanes_from(static_cast<uint32_t>(q + static_cast<uint64_t>(n * kW)));
    c1[n] = splat_u(r.c1);
    c2[n] = splat_u(r.c2);
    c3[n] = splat_u(r.c3);
  }
  const VU m0 = splat_u(kPhiloxM0), m1 = splat_u(kPhiloxM1);
  uint32_t k0 = r.k0, k1 = r.k1;
  for (int round = 0; round < 10; ++round) {
    const VU key0 = splat_u(k0), key1 = splat_u(k1);
    for (int n = 0; n < kN; ++n) {
      VU hi0, lo0, hi1, lo1;
      mulhilo(c0[n], m0, hi0, lo0);
      mulhilo(c2[n], m1, hi1, lo1);
      c0[n] = vxor(vxor(hi1, c1[n]), key0);
      c2[n] = vxor(vxor(hi0, c3[n]), key1);
      c1[n] = lo1;
      c3[n] = lo0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int n = 0; n < kN; ++n) {
    w[n][0] = c0[n];
    w[n][1] = c1[n];
    w[n][2] = c2[n];
    w[n][3] = c3[n];
  }
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
  constexpr int kN = 2;  // vectors per Philox call (philox_words_vec)
  for (int64_t i = 0; i < r.nq; i += kN * kW) {
    VU w[kN][4];
    philox_words_vec<kN>(r, r.q0 + static_cast<uint64_t>(i), w);
    for (int n = 0; n < kN; ++n) {
      const int64_t first = i + n * kW;
      if (first >= r.nq) break;  // the counters past the run were computed and are dropped
      VF v[4] = {uniform_vec(w[n][0]), uniform_vec(w[n][1]), uniform_vec(w[n][2]), uniform_vec(w[n][3])};
      if (kNormal) {
        box_muller_vec(v[0], v[1]);
        box_muller_vec(v[2], v[3]);
      }
      store_interleaved(v, std::min<int64_t>(kW, r.nq - first), out + 4 * first);
    }
  }
}
