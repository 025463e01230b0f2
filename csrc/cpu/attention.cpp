// CPU kernel of attention: softmax(q k^T scale) v per (batch, head), no mask, no dropout, not
// causal (docs/ops_contract.md, "attention"). Made for the small heads of diffusion UNets (diffusers'
// attention_head_dim = 8: [1, 8, 256, 8]), where ATen's CPU flash kernel and the bmm of the math
// path spend their time on blocking meant for head dims of 64 and more.
//
// Per (batch, head) the keys and values are copied, converted to float32, into kt[D][nk_pad] and
// vt[D][nk_pad] (transposed, zero-padded to a multiple of 16 keys). Per query row, vectorised
// over keys: the scores as D fused multiply-adds of key vectors, their max, exp(s - max) in
// float32 lanes (attention_simd_body.h: no libm), the sum, then out[d] = (p . vt[d]) / sum.
// AVX-512 and AVX2+FMA paths under `#pragma GCC target` regions (no torch header inside one, as in
// philox_simd.cpp), chosen at run time from ATen's CPU capability; a scalar path otherwise. The
// AVX-512 path takes query rows in pairs, each key and value vector loaded once for both (1 thread,
// EPYC: [1, 8, 256, 8] 0.457 -> 0.435 ms, [1, 8, 1024, 8] 8.18 -> 5.93 ms, [1, 1, 256, 64] 0.381 ->
// 0.310 ms; benchmarks/bench_attention.py).
//
// Inputs of any strides and of float32, float16 or bfloat16 (math in float32); the output has
// q's dtype and ATen's CPU flash layout: [B, H, Nq, D] viewed over a contiguous [B, Nq, H, D]
// buffer, so the [B, Nq, H * D] reshape that follows in a transformer block is a view.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "../op_checks.h"
#include "cpu_common.h"
#include "simd_path.h"  // DDPM_FAST_X86_SIMD, simd_path()


namespace ddpm_fast {
namespace cpu {
namespace {

// Key columns are padded to a multiple of this (the widest lane count).
constexpr int64_t kKeyPad = 16;

// Rows [0, rows) of a task: q rows (float32, d each) -> out rows (out_stride apart); s: scratch of
// 2 nk_pad floats; kt, vt: the head's keys and values, transposed, zero-padded to nk_pad columns.
using RowsFn = void (*)(const float* q, int64_t rows, const float* kt, const float* vt, int64_t nk, int64_t nk_pad,
                        int64_t d, float scale, float* s, float* out, int64_t out_stride);

// --- scalar path: the same four steps, exp_f32 of cpu_common.h ----------------------------------
void attention_rows_scalar(const float* q, int64_t rows, const float* kt, const float* vt, int64_t nk,
                           int64_t nk_pad, int64_t d, float scale, float* s, float* out, int64_t out_stride) {
  for (int64_t r = 0; r < rows; ++r, q += d, out += out_stride) {
    float mx = -__builtin_inff();
    bool nan = false;
    for (int64_t j = 0; j < nk; ++j) {
      float a = 0.0f;
      for (int64_t e = 0; e < d; ++e) a += q[e] * kt[e * nk_pad + j];
      s[j] = a * scale;
      nan |= s[j] != s[j];
      mx = s[j] > mx ? s[j] : mx;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < nk; ++j) {
      s[j] = nan ? __builtin_nanf("") : exp_f32(s[j] - mx);
      sum += s[j];
    }
    for (int64_t e = 0; e < d; ++e) {
      float a = 0.0f;
      for (int64_t j = 0; j < nk; ++j) a += s[j] * vt[e * nk_pad + j];
      out[e] = a / sum;
    }
  }
}

#ifdef DDPM_FAST_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "simd_lanes_avx2.h"
constexpr int kRows = 1;      // query rows per pass: 2 rows x 8 outputs would need 16 + 3 of the 16 ymm
constexpr int kOutBlock = 8;  // outputs (accumulators) per weighted-sum pass
inline VF vround(VF a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
constexpr float kExpLo = -86.643394f;  // ln 2^-125 rounded up: k >= -125, so p 2^k stays normal
// p 2^k for p in [1/sqrt 2, sqrt 2] and integral k in [-125, 0]: k added to p's exponent field (exact,
// the result normal); 0 where x < kExpLo (NaN x compares false: p, NaN, is kept)
inline VF scale2(VF p, VF k, VF x) {
  const __m256i y = _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvttps_epi32(k), 23));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, splat_f(kExpLo), _CMP_LT_OQ), _mm256_castsi256_ps(y));
}
inline float hsum(VF a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float hmax(VF a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
#include "attention_simd_body.h"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's avx512fintrin.h seeds _mm512_undefined_* with a self-initialisation that -Wall reports
// as "may be used uninitialized" (here also "used uninitialized") at every intrinsic using it (as in
// philox_simd.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
namespace avx512 {
#include "simd_lanes_avx512.h"
constexpr int kRows = 2;      // query rows per pass: each key and value vector loaded once for both
constexpr int kOutBlock = 8;  // outputs per weighted-sum pass: 2 x 8 accumulators of the 32 zmm
inline VF vround(VF a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// below ln 2^-150 every result rounds to 0: the clamp only keeps -inf from making r NaN
constexpr float kExpLo = -104.0f;
// p 2^k in one instruction (vscalefps), subnormal results rounded as a product would be
inline VF scale2(VF p, VF k, VF) { return _mm512_scalef_ps(p, k); }
inline float hsum(VF a) {
  const __m256 h = _mm512_castps512_ps256(_mm512_add_ps(a, _mm512_shuffle_f32x4(a, a, 0x4E)));  // + upper half
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float hmax(VF a) { return _mm512_reduce_max_ps(a); }
#include "attention_simd_body.h"
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif  // DDPM_FAST_X86_SIMD

RowsFn choose_rows() {
#ifdef DDPM_FAST_X86_SIMD
  if (simd_path() == SimdPath::kAvx512) return &avx512::attention_rows;
  if (simd_path() == SimdPath::kAvx2) return &avx2::attention_rows;
#endif
  return &attention_rows_scalar;
}

RowsFn rows_fn() {
  static const RowsFn f = choose_rows();
  return f;
}

// Strided [rows, cols] view of a tensor's storage (element strides), of storage dtype dt.
struct Strided {
  const void* data;
  int dt;
  int64_t row_stride, col_stride;
};

// dst[r * dst_row + c * dst_col] = float(src[r, c]) for r < rows, c < cols.
void gather(const Strided& src, int64_t base, int64_t rows, int64_t cols, float* dst, int64_t dst_row, int64_t dst_col) {
  dispatch_dtype(src.dt, [&](auto tag) {
    using T = decltype(tag);
    const T* p = static_cast<const T*>(src.data) + base;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[r * dst_row + c * dst_col] = to_float<T>(p[r * src.row_stride + c * src.col_stride]);
  });
}

// Rows of this many queries per task: each task reads its head's kt and vt (2 D nk_pad floats).
constexpr int64_t kRowsPerTask = 64;

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale_in) {
  const char* op = "attention";
  check_attention_args(op, q, k, v, scale_in);
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3), Nk = k.size(2);
  // ATen's CPU flash layout: [B, Nq, H, D] storage, seen as [B, H, Nq, D]
  at::Tensor out = at::empty({B, Nq, H, D}, q.options()).transpose(1, 2);
  if (out.numel() == 0) return out;
  if (Nk == 0) return out.zero_();  // an empty softmax weighs nothing (the reference's p @ v)
  const float scale = static_cast<float>(scale_in);
  const int64_t nk_pad = (Nk + kKeyPad - 1) / kKeyPad * kKeyPad, BH = B * H;
  // kv[bh] = (kt [D][nk_pad], vt [D][nk_pad]), float32, the padding zero
  at::Tensor kv = at::zeros({BH, 2, D, nk_pad}, q.options().dtype(at::kFloat));
  float* kvp = kv.data_ptr<float>();
  const Strided ks{k.data_ptr(), dtype_code(k), k.stride(2), k.stride(3)};
  const Strided vs{v.data_ptr(), dtype_code(v), v.stride(2), v.stride(3)};
  at::parallel_for(0, BH, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t bh = lo; bh < hi; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      float* kt = kvp + bh * 2 * D * nk_pad;
      gather(ks, b * k.stride(0) + h * k.stride(1), Nk, D, kt, 1, nk_pad);  // kt[e][j] = k[j, e]
      gather(vs, b * v.stride(0) + h * v.stride(1), Nk, D, kt + D * nk_pad, 1, nk_pad);
    }
  });
  const RowsFn rows_of = rows_fn();
  const int odt = dtype_code(out);
  const int64_t nblk = (Nq + kRowsPerTask - 1) / kRowsPerTask;
  const Strided qs{q.data_ptr(), dtype_code(q), q.stride(2), q.stride(3)};
  float* out32 = odt == DT_FLOAT32 ? out.data_ptr<float>() : nullptr;  // else through ob
  at::parallel_for(0, BH * nblk, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> s(2 * nk_pad), qf(kRowsPerTask * D), ob(out32 != nullptr ? 0 : kRowsPerTask * D);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t bh = task / nblk, b = bh / H, h = bh % H, i0 = (task % nblk) * kRowsPerTask;
      const int64_t rows = std::min(Nq - i0, kRowsPerTask);
      const float* kt = kvp + bh * 2 * D * nk_pad;
      gather(qs, b * q.stride(0) + h * q.stride(1) + i0 * q.stride(2), rows, D, qf.data(), D, 1);  // float32 rows
      const int64_t o = ((b * Nq + i0) * H + h) * D;  // row i of head h: ((b Nq + i) H + h) D
      if (out32 != nullptr) {
        rows_of(qf.data(), rows, kt, kt + D * nk_pad, Nk, nk_pad, D, scale, s.data(), out32 + o, H * D);
      } else {
        rows_of(qf.data(), rows, kt, kt + D * nk_pad, Nk, nk_pad, D, scale, s.data(), ob.data(), D);
        for (int64_t r = 0; r < rows; ++r) store_block(out.data_ptr(), odt, o + r * H * D, D, ob.data() + r * D);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) { m.impl("attention", &attention); }

}  // namespace cpu
}  // namespace ddpm_fast
