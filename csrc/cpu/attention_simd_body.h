// One query row of attention.cpp's kernel, written once for every lane type: included inside each
// `#pragma GCC target` region of attention.cpp, after the lane type's definitions (kW lanes of VF;
// splat_f, vloadu, vstoreu, vfma, vmul, vsub, vadd, vmax, vround, kExpLo, scale2, hmax, hsum).
// No include guard: every region includes it once.

// exp_nonpositive_n: exp(x) for the softmax's x = s - max <= 0 (and NaN). x = t ln 2, t = k + f
// (k integral, |f| <= 1/2), 2^f by a fitted polynomial, 2^k applied by the lanes' `scale2`:
// AVX-512's vscalefps, which rounds results below 2^-126 to subnormals and 0; AVX2 adds k to the
// exponent field and flushes
// results below 2^-125 to 0 (against the row's largest term, exactly 1). t is one float32 product,
// so its rounding (up to 2^-25 |t|) sets the relative error of small weights: measured against
// float64 over x in [-86.6, 0], AVX2, 2e6 points: absolute error <= 4.7e-8 (Cephes' two-part
// ln 2 reduction of exp_simd_body.h: 4.0e-8), relative <= 5.4e-7 where the weight is above 1e-3
// (Cephes: 1.7e-7) and <= 1.0e-6 above e^-16. Four instructions fewer per vector than that
// reduction and its scaling: [1, 8, 256, 8] 0.661 -> 0.573 ms on the AVX2 EPYC, 1 thread. NaN
// stays NaN: vmax(lo, x) returns its second operand when either is NaN (MAXPS semantics).
//
// It runs on kG vectors at once, each step written for all of them: the polynomial is a
// chain of six dependent FMAs, and with one vector per loop iteration the chains of successive
// iterations did not overlap (the scheduler filled with waiting operations: ~12 cycles a vector on
// the AVX2 EPYC, against ~6 for its FMA throughput); interleaved, they do.
template <int kG>
inline void exp_nonpositive_n(VF x[kG]) {
  VF kf[kG], f[kG], p[kG];
  for (int g = 0; g < kG; ++g) {
    const VF t = vmul(vmax(splat_f(kExpLo), x[g]), splat_f(1.44269504088896341f));  // exp(x) = 2^t
    kf[g] = vround(t);
    f[g] = vsub(t, kf[g]);  // exact, |f| <= 1/2
  }
  // 2^f = 1 + f q(f), q of degree 5 fitted for relative error on |f| <= 1/2 (1.6e-8 in exact
  // arithmetic with these float32 coefficients)
  for (int g = 0; g < kG; ++g) p[g] = vfma(splat_f(1.5353362e-4f), f[g], splat_f(1.3398875e-3f));
  for (int g = 0; g < kG; ++g) p[g] = vfma(p[g], f[g], splat_f(9.6184369e-3f));
  for (int g = 0; g < kG; ++g) p[g] = vfma(p[g], f[g], splat_f(5.5503324e-2f));
  for (int g = 0; g < kG; ++g) p[g] = vfma(p[g], f[g], splat_f(2.4022648e-1f));
  for (int g = 0; g < kG; ++g) p[g] = vfma(p[g], f[g], splat_f(6.9314718e-1f));
  for (int g = 0; g < kG; ++g) p[g] = vfma(p[g], f[g], splat_f(1.0f));
  for (int g = 0; g < kG; ++g) x[g] = scale2(p[g], kf[g], x[g]);
}

// out[r][0:ND] = (sum_j p[r][j] vt[d][j]) / sum[r] for R rows of weights p (row stride nk_pad), over
// the key vectors [0, nk_pad): R x ND accumulators, independent FMA chains; each vt vector is
// loaded once for the R rows.
template <int R, int ND>
inline void weighted_sum(const float* p, const float* vt, int64_t nk_pad, const float* sum, float* out,
                         int64_t out_stride) {
  VF acc[R][ND];
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < ND; ++d) acc[r][d] = splat_f(0.0f);
  for (int64_t c = 0; c < nk_pad; c += kW) {
    VF pc[R];
    for (int r = 0; r < R; ++r) pc[r] = vloadu(p + r * nk_pad + c);
    for (int d = 0; d < ND; ++d) {
      const VF vd = vloadu(vt + d * nk_pad + c);
      for (int r = 0; r < R; ++r) acc[r][d] = vfma(pc[r], vd, acc[r][d]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < ND; ++d) out[r * out_stride + d] = hsum(acc[r][d]) / sum[r];
}

template <int R, int ND>
inline void weighted_sum_tail(const float* p, const float* vt, int64_t nk_pad, const float* sum, float* out,
                              int64_t out_stride, int64_t nd) {  // nd = ND, or fewer: the last block
  if constexpr (ND > 1) {
    if (nd < ND) return weighted_sum_tail<R, ND - 1>(p, vt, nk_pad, sum, out, out_stride, nd);
  }
  weighted_sum<R, ND>(p, vt, nk_pad, sum, out, out_stride);
}

// R query rows (q: R rows of d floats, unscaled) against one head's keys and values, transposed and
// zero-padded to nk_pad (a multiple of kW) columns: kt[d][nk_pad], vt[d][nk_pad]. s: R nk_pad floats
// of scratch. out[r * out_stride + 0:d] = softmax(scale q_r k^T) v.
template <int R>
inline void attention_rows_r(const float* q, const float* kt, const float* vt, int64_t nk, int64_t nk_pad,
                             int64_t d, float scale, float* s, float* out, int64_t out_stride) {
  const VF vscale = splat_f(scale);
  // 1. scores s[r][j] = (q_r . k_j) scale, 4 / R key vectors per pass: four independent FMA chains of
  // length d, each key vector loaded once for the R rows
  constexpr int G = 4 / R;
  int64_t c = 0;
  for (; c + G * kW <= nk_pad; c += G * kW) {
    VF a[R][G];
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) a[r][g] = splat_f(0.0f);
    const float* kc = kt + c;
    for (int64_t e = 0; e < d; ++e, kc += nk_pad) {
      VF kv[G];
      for (int g = 0; g < G; ++g) kv[g] = vloadu(kc + g * kW);
      for (int r = 0; r < R; ++r) {
        const VF qe = splat_f(q[r * d + e]);
        for (int g = 0; g < G; ++g) a[r][g] = vfma(qe, kv[g], a[r][g]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) vstoreu(s + r * nk_pad + c + g * kW, vmul(a[r][g], vscale));
  }
  for (; c < nk_pad; c += kW) {
    for (int r = 0; r < R; ++r) {
      VF a0 = splat_f(0.0f);
      for (int64_t e = 0; e < d; ++e) a0 = vfma(splat_f(q[r * d + e]), vloadu(kt + e * nk_pad + c), a0);
      vstoreu(s + r * nk_pad + c, vmul(a0, vscale));
    }
  }
  float total[R];
  for (int r = 0; r < R; ++r) {
    float* sr = s + r * nk_pad;
    for (int64_t j = nk; j < nk_pad; ++j) sr[j] = -__builtin_inff();  // padding: exp gives 0
    // 2. the row's max. A NaN score may be dropped here (vmax returns its second operand): its
    // exp below is NaN all the same, and so is the sum, so the whole row is NaN, as in the reference.
    VF m = vloadu(sr);
    for (c = kW; c < nk_pad; c += kW) m = vmax(m, vloadu(sr + c));
    // 3. p = exp(s - max) in place, and its sum
    const VF vmx = splat_f(hmax(m));
    constexpr int kG = 4;  // vectors per pass of exp_nonpositive_n
    VF sum[kG];
    for (int g = 0; g < kG; ++g) sum[g] = splat_f(0.0f);
    for (c = 0; c + kG * kW <= nk_pad; c += kG * kW) {
      VF e[kG];
      for (int g = 0; g < kG; ++g) e[g] = vsub(vloadu(sr + c + g * kW), vmx);
      exp_nonpositive_n<kG>(e);
      for (int g = 0; g < kG; ++g) {
        vstoreu(sr + c + g * kW, e[g]);
        sum[g] = vadd(sum[g], e[g]);
      }
    }
    for (; c < nk_pad; c += kW) {
      VF e[1] = {vsub(vloadu(sr + c), vmx)};
      exp_nonpositive_n<1>(e);
      vstoreu(sr + c, e[0]);
      sum[0] = vadd(sum[0], e[0]);
    }
    total[r] = hsum(vadd(vadd(sum[0], sum[1]), vadd(sum[2], sum[3])));
  }
  // 4. out = p v / sum, kOutBlock outputs at a time (then the last 1 .. kOutBlock - 1)
  for (int64_t e = 0; e < d; e += kOutBlock)
    weighted_sum_tail<R, kOutBlock>(s, vt + e * nk_pad, nk_pad, total, out + e, out_stride,
                                    std::min<int64_t>(kOutBlock, d - e));
}

// Every row of a task: kRows at a time, then one by one. s holds kRows nk_pad floats.
inline void attention_rows(const float* q, int64_t rows, const float* kt, const float* vt, int64_t nk,
                           int64_t nk_pad, int64_t d, float scale, float* s, float* out, int64_t out_stride) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows)
    attention_rows_r<kRows>(q + r * d, kt, vt, nk, nk_pad, d, scale, s, out + r * out_stride, out_stride);
  for (; r < rows; ++r) attention_rows_r<1>(q + r * d, kt, vt, nk, nk_pad, d, scale, s, out + r * out_stride, out_stride);
}
