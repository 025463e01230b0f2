// CPU kernel of groupnorm_temb_silu: per (sample, group), statistics of x (+ temb) over
// (C/G, spatial) in double, then one pass y = silu((x - center_c) * scale_c + shift_c) with the affine, the
// normalisation and the temb adds folded into per-channel constants. The group is read
// three times (sum, centred sum of squares, output) while it sits in cache. The loops over a block
// are SIMD, dispatched at run time (groupnorm_simd.h).
// Non-contiguous x is copied to contiguous; weight, bias and temb are converted to float32.
#include <cmath>
#include <vector>

#include <torch/library.h>

#include "../op_checks.h"
#include "cpu_common.h"
#include "groupnorm_simd.h"

namespace ddpm_fast {
namespace cpu {
namespace {

at::Tensor groupnorm_temb_silu(const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
                               const c10::optional<at::Tensor>& temb_in, int64_t num_groups, double eps,
                               int64_t temb_mode, bool apply_silu) {
  const char* op = "groupnorm_temb_silu";
  const GroupNormSizes s = check_groupnorm_temb_silu_args(op, x_in, weight_in, bias_in, temb_in, num_groups, eps,
                                                          temb_mode);
  const int64_t B = s.B, C = s.C, HW = s.HW;
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight_in.to(at::kFloat).contiguous(), bs = bias_in.to(at::kFloat).contiguous();
  at::Tensor temb;
  if (temb_mode != TEMB_NONE) temb = temb_in->to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t G = num_groups, Cg = C / G;
  const int dt = dtype_code(x);
  const float* wp = w.data_ptr<float>();
  const float* bp = bs.data_ptr<float>();
  const float* tp = temb_mode != TEMB_NONE ? temb.data_ptr<float>() : nullptr;
  const void* xp = x.data_ptr();
  void* op_ = out.data_ptr();
  if (B * C == 0 || HW == 0) return out;

  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(Cg * HW, 1));
  const bool before = temb_mode == TEMB_BEFORE_NORM, after = temb_mode == TEMB_AFTER_NORM;
  // a product, not a divide per group: two double divides on each group's dependency chain were a
  // fifth of a 40x32x4x4 call (64-value groups)
  const double inv_count = 1.0 / static_cast<double>(Cg * HW);
  at::parallel_for(0, B * G, grain, [&](int64_t lo, int64_t hi) {
    alignas(64) float buf[kBlock];
    std::vector<float> center(Cg), scale(Cg), shift(Cg);  // the group's per-channel constants
    for (int64_t bg = lo; bg < hi; ++bg) {
      const int64_t b = bg / G, c0 = (bg % G) * Cg, g0 = (b * C + c0) * HW;
      const float* temb_row = tp ? tp + b * C + c0 : nullptr;
      // The group's moments around one shift per channel (stride 0: one for all): float32 data
      // is read in place, a whole group per call; other dtypes block by block through buf.
      auto moments = [&](const float* sh, int64_t stride, double& s1, double& s2) {
        if (dt == DT_FLOAT32) {
          const float* gx = static_cast<const float*>(xp) + g0;
          if (stride == 0) groupnorm_moments(gx, 1, Cg * HW, sh, 0, s1, s2);  // one run: fewer flushes
          else groupnorm_moments(gx, Cg, HW, sh, stride, s1, s2);
          return;
        }
        for (int64_t c = 0; c < Cg; ++c) {
          for (int64_t e = 0; e < HW; e += kBlock) {
            const int64_t n = std::min(kBlock, HW - e);
            load_block(xp, dt, g0 + c * HW + e, n, buf);  // float16 / bfloat16 (float32 returned above)
            groupnorm_moments(buf, 1, n, sh + c * stride, 0, s1, s2);
          }
        }
      };
      // pass 1: mean of h = x (+ temb before the norm), summed around a pivot (the group's first
      // value) so that a large common offset costs no digits
      const float pivot = to_float_at(xp, dt, g0);
      double s1 = 0.0, s2 = 0.0, unused = 0.0;
      moments(&pivot, 0, s1, unused);
      if (before) {
        for (int64_t c = 0; c < Cg; ++c) s1 += static_cast<double>(temb_row[c]) * static_cast<double>(HW);
      }
      const double mean = pivot + s1 * inv_count;
      // pass 2: biased variance, centred on the mean (no cancellation); with temb before the norm
      // channel c's values are x + temb_c, so its centre is mean - temb_c
      for (int64_t c = 0; c < Cg; ++c) center[c] = static_cast<float>(mean - (before ? temb_row[c] : 0.0));
      moments(center.data(), before ? 1 : 0, unused, s2);
      const double rstd = 1.0 / std::sqrt(s2 * inv_count + eps);
      // pass 3: y = (x - center_c) * scale_c + shift_c (+ silu); centring first keeps digits when
      // |mean| >> std
      for (int64_t c = 0; c < Cg; ++c) {
        scale[c] = static_cast<float>(rstd * wp[c0 + c]);
        shift[c] = static_cast<float>(bp[c0 + c] + (after ? temb_row[c] : 0.0));
      }
      if (dt == DT_FLOAT32) {  // straight into the output
        groupnorm_affine(static_cast<const float*>(xp) + g0, static_cast<float*>(op_) + g0, Cg, HW, center.data(),
                         scale.data(), shift.data(), apply_silu);
        continue;
      }
      for (int64_t c = 0; c < Cg; ++c) {
        for (int64_t e = 0; e < HW; e += kBlock) {
          const int64_t n = std::min(kBlock, HW - e);
          load_block(xp, dt, g0 + c * HW + e, n, buf);
          groupnorm_affine(buf, buf, 1, n, &center[c], &scale[c], &shift[c], apply_silu);
          store_block(op_, dt, g0 + c * HW + e, n, buf);
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) { m.impl("groupnorm_temb_silu", &groupnorm_temb_silu); }

}  // namespace cpu
}  // namespace ddpm_fast
