// CPU kernels of ddim_step / ddim_step_out: x_t, model_out (, noise) -> x_{t_prev} in one pass.
// Non-contiguous inputs are copied to contiguous; ddim_step_out writes `out` directly when it is
// contiguous (it may be x_t itself: every block is read before it is written), else through a
// contiguous temporary, and given first_bad records the model output's NaN/inf in the same pass
// (BadBlocks, cpu_common.h).
#include <type_traits>

#include <torch/library.h>

#include "../op_checks.h"
#include "cpu_common.h"
#include "ddpm_fast/step_math.h"
#include "simd_path.h"

namespace ddpm_fast {
namespace cpu {
namespace {

template <int kPrediction>
void ddim_blocks(const at::Tensor& x, const at::Tensor& m, const NoiseSource& noise, const Timesteps& ts,
                 const Timesteps& tps, const at::Tensor& table, float eta, bool clip, float clip_range,
                 float final_alpha_bar, const Guide& g, BadBlocks& bad, at::Tensor& out) {
  const int64_t B = x.size(0), N = per_sample(x), T = table.size(0);
  const int xdt = dtype_code(x), mdt = dtype_code(m);
  const double* tab = table.data_ptr<double>();
  const bool add_noise = eta > 0.0f;
  for_each_block(B, N, [&](int64_t b, int64_t e0, int64_t n) {
    alignas(64) float xb[kBlock], mb[kBlock], zb[kBlock];
    const int64_t tb = ts(b), off = b * N + e0;
    const DdimCoefs c = ddim_coefs(tab, tb, tps(b), T, eta, final_alpha_bar);
    const float* z = add_noise ? noise.block(b, tb, N, e0, n, zb) : zb;  // zb unread without noise
    uint8_t* flag = bad.flag(b, e0);
    run_on_simd_path([&]() DDPM_FAST_INLINE_LAMBDA {  // the block's loads, math and store: simd_path.h
      const float* xv = block_in(x.data_ptr(), xdt, off, n, xb);
      const float* mv = model_block(m.data_ptr(), mdt, B, N, b, e0, n, g.guided, g.w, mb, flag);
      float* ov = block_out(out.data_ptr(), xdt, off, xb);
      // ov may be xv or mv: element i is read before it is written (as in reverse_step_blocks).
      // add_noise as a constant of each loop: tested per element, it kept GCC from vectorising the
      // eta > 0 loop (64x3x32x32, noise given: 670 us, against 116 us at eta = 0)
      auto step = [&](auto noisy) DDPM_FAST_INLINE_LAMBDA {
#pragma GCC ivdep
        for (int64_t i = 0; i < n; ++i) {
          ov[i] = ddim_step_elem<kPrediction>(c, xv[i], mv[i], noisy ? z[i] : 0.0f, clip, clip_range, noisy);
        }
      };
      if (add_noise) {
        step(std::true_type{});
      } else {
        step(std::false_type{});
      }
      block_out_done(out.data_ptr(), xdt, off, n, xb);
    });
  });
}

// Writes x_{t_prev} of checked inputs into `out` (contiguous, x_t's dtype and shape) and the NaN
// record into first_bad when given.
void ddim_step_into(const at::Tensor& x_in, const at::Tensor& m_in, const ScheduleArgs& a,
                    const c10::optional<at::Tensor>& noise_in, const c10::optional<at::Tensor>& seed,
                    int64_t sample_offset, double eta, int64_t prediction_type, bool clip, double clip_range,
                    double final_alpha_bar, const c10::optional<double>& guidance_scale, at::Tensor& out,
                    const c10::optional<at::Tensor>& first_bad = c10::nullopt) {
  const at::Tensor& table = a.table;
  const Timesteps ts(a.t), tps(a.t_prev);
  const at::Tensor x = x_in.contiguous(), m = m_in.contiguous();
  at::Tensor noise;
  const NoiseSource src = noise_source(noise_in, seed, sample_offset, noise);
  const float e = static_cast<float>(eta), cr = static_cast<float>(clip_range), fa = static_cast<float>(final_alpha_bar);
  const Guide g = guide_of(guidance_scale);
  BadBlocks bad(first_bad, x.size(0), per_sample(x));
  switch (prediction_type) {
    case PRED_EPSILON: ddim_blocks<PRED_EPSILON>(x, m, src, ts, tps, table, e, clip, cr, fa, g, bad, out); break;
    case PRED_SAMPLE: ddim_blocks<PRED_SAMPLE>(x, m, src, ts, tps, table, e, clip, cr, fa, g, bad, out); break;
    default: ddim_blocks<PRED_V>(x, m, src, ts, tps, table, e, clip, cr, fa, g, bad, out);
  }
  bad.reduce(ts);
}

at::Tensor ddim_step(const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& t, const at::Tensor& t_prev,
                     const at::Tensor& table_in, const c10::optional<at::Tensor>& noise_in,
                     const c10::optional<at::Tensor>& seed, int64_t sample_offset, double eta,
                     int64_t prediction_type, bool clip, double clip_range, double final_alpha_bar,
                     c10::optional<double> guidance_scale) {
  const ScheduleArgs a =
      check_ddim_step_args("ddim_step", x_in, m_in, t, t_prev, table_in, noise_in, seed, sample_offset, eta,
                           prediction_type, clip_range, final_alpha_bar, guidance_scale);
  at::Tensor out = at::empty_like(x_in, at::MemoryFormat::Contiguous);
  ddim_step_into(x_in, m_in, a, noise_in, seed, sample_offset, eta, prediction_type, clip, clip_range, final_alpha_bar,
                 guidance_scale, out);
  return out;
}

void ddim_step_out(const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& t, const at::Tensor& t_prev,
                   const at::Tensor& table_in, const c10::optional<at::Tensor>& noise_in,
                   const c10::optional<at::Tensor>& seed, int64_t sample_offset, double eta, int64_t prediction_type,
                   bool clip, double clip_range, double final_alpha_bar, c10::optional<double> guidance_scale,
                   at::Tensor out, const c10::optional<at::Tensor>& first_bad) {
  const char* op = "ddim_step_out";
  const ScheduleArgs a =
      check_ddim_step_args(op, x_in, m_in, t, t_prev, table_in, noise_in, seed, sample_offset, eta, prediction_type,
                           clip_range, final_alpha_bar, guidance_scale);
  check_step_out(op, x_in, out, first_bad);
  write_step_out(x_in, out, [&](at::Tensor& dst) {
    ddim_step_into(x_in, m_in, a, noise_in, seed, sample_offset, eta, prediction_type, clip, clip_range,
                   final_alpha_bar, guidance_scale, dst, first_bad);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("ddim_step", &ddim_step);
  m.impl("ddim_step_out", &ddim_step_out);
}

}  // namespace cpu
}  // namespace ddpm_fast
