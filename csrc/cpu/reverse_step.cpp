// CPU kernels of reverse_step / reverse_step_out: one fused pass x_t, model_out (, noise) -> x_{t-1},
// noise drawn in the kernel from Philox stream 1 unless given. Non-contiguous inputs are copied to
// contiguous; reverse_step_out writes `out` directly when it is contiguous (it may be x_t itself:
// every block is read before it is written), else through a contiguous temporary; given first_bad it
// records the NaN/inf of the model output in the same pass (BadBlocks, cpu_common.h).
#include <torch/library.h>

#include "../op_checks.h"
#include "cpu_common.h"
#include "ddpm_fast/step_math.h"
#include "simd_path.h"

namespace ddpm_fast {
namespace cpu {
namespace {

template <int kPrediction>
void reverse_step_blocks(const at::Tensor& x, const at::Tensor& m, const NoiseSource& noise, const Timesteps& ts,
                         const at::Tensor& table, int variance_type, bool clip, float clip_range, const Guide& g,
                         BadBlocks& bad, void* out) {
  const int64_t B = x.size(0), N = per_sample(x), T = table.size(0);
  const int xdt = dtype_code(x), mdt = dtype_code(m);
  const double* tab = table.data_ptr<double>();
  for_each_block(B, N, [&](int64_t b, int64_t e0, int64_t n) {
    alignas(64) float xb[kBlock], mb[kBlock], zb[kBlock];
    const int64_t tb = ts(b), off = b * N + e0;
    const ReverseCoefs c = reverse_coefs(tab, tb, T, kPrediction, variance_type);
    const float* z = zb;
    if (c.sigma != 0.0f) {
      z = noise.block(b, tb, N, e0, n, zb);
    } else {  // t = 0: sigma = 0 and Philox normals are finite, so sigma * z = 0 exactly
      std::fill(zb, zb + n, 0.0f);
    }
    uint8_t* flag = bad.flag(b, e0);
    run_on_simd_path([&]() DDPM_FAST_INLINE_LAMBDA {  // the block's loads, math and store: simd_path.h
      const float* xv = block_in(x.data_ptr(), xdt, off, n, xb);
      const float* mv = model_block(m.data_ptr(), mdt, B, N, b, e0, n, g.guided, g.w, mb, flag);
      float* ov = block_out(out, xdt, off, xb);
      // ov may be xv (out is x_t, or both are xb) or mv: element i is read before it is written,
      // so no iteration depends on another's store and the loop vectorises without a runtime check
#pragma GCC ivdep
      for (int64_t i = 0; i < n; ++i) ov[i] = reverse_step_elem<kPrediction>(c, xv[i], mv[i], z[i], clip, clip_range);
      block_out_done(out, xdt, off, n, xb);
    });
  });
}

// Writes x_{t-1} of checked inputs into `out` (contiguous, x_t's dtype and shape) and the NaN record
// into first_bad when given.
void reverse_step_into(const at::Tensor& x_in, const at::Tensor& m_in, const ScheduleArgs& a,
                       const c10::optional<at::Tensor>& noise_in, const c10::optional<at::Tensor>& seed,
                       int64_t sample_offset, int64_t prediction_type, int64_t variance_type, bool clip,
                       double clip_range, const c10::optional<double>& guidance_scale, at::Tensor& out,
                       const c10::optional<at::Tensor>& first_bad = c10::nullopt) {
  const at::Tensor x = x_in.contiguous(), m = m_in.contiguous();
  const at::Tensor& table = a.table;
  const Timesteps ts(a.t);
  at::Tensor noise;
  const NoiseSource src = noise_source(noise_in, seed, sample_offset, noise);
  const float cr = static_cast<float>(clip_range);
  const Guide g = guide_of(guidance_scale);
  BadBlocks bad(first_bad, x.size(0), per_sample(x));
  switch (prediction_type) {
    case PRED_EPSILON:
      reverse_step_blocks<PRED_EPSILON>(x, m, src, ts, table, variance_type, clip, cr, g, bad, out.data_ptr());
      break;
    case PRED_SAMPLE:
      reverse_step_blocks<PRED_SAMPLE>(x, m, src, ts, table, variance_type, clip, cr, g, bad, out.data_ptr());
      break;
    default:
      reverse_step_blocks<PRED_V>(x, m, src, ts, table, variance_type, clip, cr, g, bad, out.data_ptr());
  }
  bad.reduce(ts);
}

at::Tensor reverse_step(const at::Tensor& x_t, const at::Tensor& model_out, const at::Tensor& t,
                        const at::Tensor& table, const c10::optional<at::Tensor>& noise,
                        const c10::optional<at::Tensor>& seed, int64_t sample_offset, int64_t prediction_type,
                        int64_t variance_type, bool clip, double clip_range,
                        c10::optional<double> guidance_scale) {
  const ScheduleArgs a = check_reverse_step_args("reverse_step", x_t, model_out, t, table, noise, seed, sample_offset,
                                                 prediction_type, variance_type, clip_range, guidance_scale);
  at::Tensor out = at::empty_like(x_t, at::MemoryFormat::Contiguous);
  reverse_step_into(x_t, model_out, a, noise, seed, sample_offset, prediction_type, variance_type, clip, clip_range,
                    guidance_scale, out);
  return out;
}

void reverse_step_out(const at::Tensor& x_t, const at::Tensor& model_out, const at::Tensor& t,
                      const at::Tensor& table, const c10::optional<at::Tensor>& noise,
                      const c10::optional<at::Tensor>& seed, int64_t sample_offset, int64_t prediction_type,
                      int64_t variance_type, bool clip, double clip_range, c10::optional<double> guidance_scale,
                      at::Tensor out, const c10::optional<at::Tensor>& first_bad) {
  const char* op = "reverse_step_out";
  const ScheduleArgs a = check_reverse_step_args(op, x_t, model_out, t, table, noise, seed, sample_offset,
                                                 prediction_type, variance_type, clip_range, guidance_scale);
  check_step_out(op, x_t, out, first_bad);
  write_step_out(x_t, out, [&](at::Tensor& dst) {
    reverse_step_into(x_t, model_out, a, noise, seed, sample_offset, prediction_type, variance_type, clip, clip_range,
                      guidance_scale, dst, first_bad);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("reverse_step", &reverse_step);
  m.impl("reverse_step_out", &reverse_step_out);
}

}  // namespace cpu
}  // namespace ddpm_fast
