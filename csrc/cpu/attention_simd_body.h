// One query row of attention.cpp's kernel, written once for every lane type: included inside each
// `#pragma GCC target` region of attention.cpp, after the lane type's definitions (kW lanes of VF;
// splat_f, vload, vstore, vfma, vmul, vsub, vadd, vmax, vround, kExpLo, scale2, hmax, hsum).
// No include guard: every region includes it once.

#include "exp_simd_body.h"

// exp(x) for the softmax's x = s - max <= 0 (and NaN): exp_simd_body.h's reduction and polynomial
// (~1 ulp), 2^k applied by the lanes' `scale2`: AVX-512's vscalefps, which rounds results below
// 2^-126 to subnormals and 0; AVX2 builds 2^k from its bits and flushes those results to 0 (against
// the row's largest term, exactly 1, they are below 2^-126). NaN stays NaN: vmax(lo, x) returns its
// second operand when either is NaN (MAXPS semantics).
inline VF exp_nonpositive(VF x) {
  const VF xc = vmax(splat_f(kExpLo), x);
  const VF kf = vround(vmul(xc, splat_f(1.44269504088896341f)));   // k = round(x / ln 2)
  return scale2(exp_reduced(xc, kf), kf, x);
}

// out[0:ND] = (sum_j p[j] vt[d][j]) / sum over the key vectors [0, nk_pad): ND accumulators, one
// per output element, so the FMA chains are independent.
template <int ND>
inline void weighted_sum(const float* p, const float* vt, int64_t nk_pad, float sum, float* out) {
  VF acc[ND];
  for (int d = 0; d < ND; ++d) acc[d] = splat_f(0.0f);
  for (int64_t c = 0; c < nk_pad; c += kW) {
    const VF pc = vload(p + c);
    for (int d = 0; d < ND; ++d) acc[d] = vfma(pc, vload(vt + d * nk_pad + c), acc[d]);
  }
  for (int d = 0; d < ND; ++d) out[d] = hsum(acc[d]) / sum;
}

// One query row: q[0:d] (float32, unscaled) against one head's keys and values, transposed and
// zero-padded to nk_pad (a multiple of kW) columns: kt[d][nk_pad], vt[d][nk_pad]. s: nk_pad floats
// of scratch. out[0:d] = softmax(scale q k^T) v.
inline void attention_row(const float* q, const float* kt, const float* vt, int64_t nk, int64_t nk_pad,
                          int64_t d, float scale, float* s, float* out) {
  const VF vscale = splat_f(scale);
  // 1. scores s[j] = (q . k_j) scale, four key vectors per pass: four independent FMA chains of
  // length d, each key vector loaded once per row
  int64_t c = 0;
  for (; c + 4 * kW <= nk_pad; c += 4 * kW) {
    VF a0 = splat_f(0.0f), a1 = splat_f(0.0f), a2 = splat_f(0.0f), a3 = splat_f(0.0f);
    const float* kc = kt + c;
    for (int64_t e = 0; e < d; ++e, kc += nk_pad) {
      const VF qe = splat_f(q[e]);
      a0 = vfma(qe, vload(kc), a0);
      a1 = vfma(qe, vload(kc + kW), a1);
      a2 = vfma(qe, vload(kc + 2 * kW), a2);
      a3 = vfma(qe, vload(kc + 3 * kW), a3);
    }
    vstore(s + c, vmul(a0, vscale));
    vstore(s + c + kW, vmul(a1, vscale));
    vstore(s + c + 2 * kW, vmul(a2, vscale));
    vstore(s + c + 3 * kW, vmul(a3, vscale));
  }
  for (; c < nk_pad; c += kW) {
    VF a0 = splat_f(0.0f);
    for (int64_t e = 0; e < d; ++e) a0 = vfma(splat_f(q[e]), vload(kt + e * nk_pad + c), a0);
    vstore(s + c, vmul(a0, vscale));
  }
  for (int64_t j = nk; j < nk_pad; ++j) s[j] = -__builtin_inff();  // padding: exp gives 0
  // 2. the row's max. A NaN score may be dropped here (vmax returns its second operand): its
  // exp below is NaN all the same, and so is the sum, so the whole row is NaN, as in the reference.
  VF m = vload(s);
  for (c = kW; c < nk_pad; c += kW) m = vmax(m, vload(s + c));
  const float mx = hmax(m);
  // 3. p = exp(s - max) in place, and its sum
  const VF vmx = splat_f(mx);
  VF sum = splat_f(0.0f);
  for (c = 0; c < nk_pad; c += kW) {
    const VF e = exp_nonpositive(vsub(vload(s + c), vmx));
    vstore(s + c, e);
    sum = vadd(sum, e);
  }
  const float total = hsum(sum);
  // 4. out = p v / sum, eight outputs at a time
  int64_t e = 0;
  for (; e + 8 <= d; e += 8) weighted_sum<8>(s, vt + e * nk_pad, nk_pad, total, out + e);
  switch (d - e) {
    case 7: weighted_sum<7>(s, vt + e * nk_pad, nk_pad, total, out + e); break;
    case 6: weighted_sum<6>(s, vt + e * nk_pad, nk_pad, total, out + e); break;
    case 5: weighted_sum<5>(s, vt + e * nk_pad, nk_pad, total, out + e); break;
    case 4: weighted_sum<4>(s, vt + e * nk_pad, nk_pad, total, out + e); break;
    case 3: weighted_sum<3>(s, vt + e * nk_pad, nk_pad, total, out + e); break;
    case 2: weighted_sum<2>(s, vt + e * nk_pad, nk_pad, total, out + e); break;
    case 1: weighted_sum<1>(s, vt + e * nk_pad, nk_pad, total, out + e); break;
    default: break;
  }
}
