// The SIMD noise generator, written once over a vector ISA and included by philox_simd.cpp inside
// each `#pragma GCC target` region (no include guard: one copy per ISA namespace), so that every
// function here is compiled for that ISA and has internal linkage. The includer defines, in the
// enclosing namespace: kW (lanes), VU / VF (uint32 / float vectors), splat_u, lanes_from (the
// counter of each lane), vxor, mul_even (the 64-bit products of the even 32-bit lanes), odd_down
// (odd 32-bit lanes copied down onto the even ones), merge_even_odd, store_words (the interleaved
// store of four word vectors, in lanes_from's counter order), kept_apart (an optimisation barrier
// that returns its argument), to_float, srl9, splat_f, vadd, vmul,
// and (included before this file) the functions of ddpm_fast/box_muller_ff_body.h over VF / VU.

// The round keys of a run as vectors, made once per fill: splatting them inside the rounds cost a
// move to a vector register and a broadcast per key and round.
struct RoundKeys {
  VU k0[10], k1[10];
  explicit RoundKeys(const PhiloxRun& r) {
    uint32_t a = r.k0, b = r.k1;
    for (int round = 0; round < 10; ++round, a += kPhiloxW0, b += kPhiloxW1) {
      k0[round] = splat_u(a);
      k1[round] = splat_u(b);
    }
  }
};

// Philox4x32-10 on kN * kW consecutive counters (q, c1, c2, c3): w[n][j] = word j of the counters
// lanes_from(q + n kW). Each vector is run as two halves of 64-bit lanes, its even 32-bit lanes (E)
// and its odd ones moved down (O): mul_even multiplies the low 32 bits of every 64-bit lane into
// the full product, whose low half is the round's lo and whose high half, moved down (odd_down), its
// hi. Only the low 32 bits of a 64-bit lane are ever used (by mul_even, the xors and the final
// merge), so the high halves may hold anything, and nothing is split or re-blended between rounds:
// a round costs 2 products + 1 shuffle + 2 xors per half, against mulhilo's 2 products, 3 shifts
// and 2 blends per vector (the shifts queued on one pipe of the Zen2 EPYC).
template <int kN>
inline void philox_words_vec(const PhiloxRun& r, const RoundKeys& keys, uint64_t q, VU w[kN][4]) {
  constexpr int kH = 2 * kN;  // independent halves: [2n] = E, [2n + 1] = O of vector n
  VU c0[kH], c1[kH], c2[kH], c3[kH];
  for (int n = 0; n < kN; ++n) {
    const VU lanes = lanes_from(static_cast<uint32_t>(q + static_cast<uint64_t>(n * kW)));
    c0[2 * n] = lanes;
    c0[2 * n + 1] = odd_down(lanes);
  }
  for (int h = 0; h < kH; ++h) {
    c1[h] = splat_u(r.c1);
    c2[h] = splat_u(r.c2);
    c3[h] = splat_u(r.c3);
  }
  const VU m0 = splat_u(kPhiloxM0), m1 = splat_u(kPhiloxM1);
  // unrolled, so the rounds' hand-over of c1 / c3 is renaming, not moves
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    for (int h = 0; h < kH; ++h) {
      const VU p0 = mul_even(c0[h], m0), p1 = mul_even(c2[h], m1);  // (hi, lo) of c0 m0, c2 m1
      // c1 ^ k0 is formed while the product is in flight (kept_apart: GCC would reassociate the
      // xors and leave the key's xor on the rounds' critical path)
      c0[h] = vxor(odd_down(p1), kept_apart(vxor(c1[h], keys.k0[round])));  // hi1 ^ c1 ^ k0
      c2[h] = vxor(odd_down(p0), kept_apart(vxor(c3[h], keys.k1[round])));  // hi0 ^ c3 ^ k1
      c1[h] = p1;                                                             // lo1
      c3[h] = p0;                                                             // lo0
    }
  }
  for (int n = 0; n < kN; ++n) {
    w[n][0] = merge_even_odd(c0[2 * n], c0[2 * n + 1]);
    w[n][1] = merge_even_odd(c1[2 * n], c1[2 * n + 1]);
    w[n][2] = merge_even_odd(c2[2 * n], c2[2 * n + 1]);
    w[n][3] = merge_even_odd(c3[2 * n], c3[2 * n + 1]);
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

// out[4i + j] = word j of the vectors' i-th counter (lanes_from's order), i < count (count <= kW):
// a partial vector goes through a buffer, so store_words is the only place that knows the order.
inline void store_interleaved(const VF v[4], int64_t count, float* out) {
  if (count == kW) return store_words(v, out);
  alignas(64) float all[4 * kW];
  store_words(v, all);
  std::copy(all, all + 4 * count, out);
}

// Uniforms of the run's vectors [v0, v1) (vector v: counters q0 + v kW + lanes_from's lanes), as
// u[4 (v - v0) + j] = word j.
inline void uniform_vecs(const PhiloxRun& r, const RoundKeys& keys, int64_t v0, int64_t v1, VF* u) {
  for (int64_t v = v0; v < v1; ++v) {
    // one vector per philox_words_vec call: two (four independent halves) need more vector
    // registers than AVX2 has, and the spills cost more than the latency they hide (64x3x32x32
    // uniforms, 2-core EPYC: 165 us with one, 201 us with two)
    VU w[1][4];
    philox_words_vec<1>(r, keys, r.q0 + static_cast<uint64_t>(v * kW), w);
    for (int j = 0; j < 4; ++j) u[4 * (v - v0) + j] = uniform_vec(w[0][j]);
  }
}

// Every counter goes through the vector code (the last vector partly stored), so an element's
// value never depends on how many elements were asked for. Chunks of kChunk vectors in two passes,
// the Philox rounds, then Box-Muller and the stores: with no Box-Muller chain between them, the
// rounds of consecutive vectors overlap in the out-of-order window.
template <bool kNormal>
void fill(const PhiloxRun& r, float* out) {
  constexpr int64_t kChunk = 64;  // vectors: 64 x 4 uniform vectors stay in L1 (8 KiB for AVX2)
  const RoundKeys keys(r);
  const int64_t nv = (r.nq + kW - 1) / kW;  // counters past the run are computed and dropped
  for (int64_t v0 = 0; v0 < nv; v0 += kChunk) {
    const int64_t v1 = std::min(nv, v0 + kChunk);
    alignas(64) VF u[4 * kChunk];
    uniform_vecs(r, keys, v0, v1, u);
    for (int64_t v = v0; v < v1; ++v) {
      VF* w = u + 4 * (v - v0);
      if (kNormal) {
        box_muller_vec(w[0], w[1]);
        box_muller_vec(w[2], w[3]);
      }
      store_interleaved(w, std::min<int64_t>(kW, r.nq - v * kW), out + 4 * v * kW);
    }
  }
}
