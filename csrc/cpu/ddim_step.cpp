// CPU kernel of ddim_step: x_t, model_out (, noise) -> x_{t_prev} in one pass. Non-contiguous
// inputs are copied to contiguous; the output is contiguous.
#include <torch/library.h>

#include "../op_checks.h"
#include "cpu_common.h"
#include "ddpm_fast/step_math.h"

namespace ddpm_fast {
namespace cpu {
namespace {

template <int kPrediction>
void ddim_blocks(const at::Tensor& x, const at::Tensor& m, const NoiseSource& noise, const Timesteps& ts,
                 const Timesteps& tps, const at::Tensor& table, float eta, bool clip, float clip_range,
                 float final_alpha_bar, at::Tensor& out) {
  const int64_t B = x.size(0), N = per_sample(x), T = table.size(0);
  const int xdt = dtype_code(x), mdt = dtype_code(m);
  const double* tab = table.data_ptr<double>();
  const bool add_noise = eta > 0.0f;
  for_each_block(B, N, [&](int64_t b, int64_t e0, int64_t n) {
    alignas(64) float xb[kBlock], mb[kBlock], zb[kBlock];
    const int64_t tb = ts(b);
    const DdimCoefs c = ddim_coefs(tab, tb, tps(b), T, eta, final_alpha_bar);
    load_block(x.data_ptr(), xdt, b * N + e0, n, xb);
    load_block(m.data_ptr(), mdt, b * N + e0, n, mb);
    if (add_noise) noise.fill(b, tb, N, e0, n, zb);
    for (int64_t i = 0; i < n; ++i) {
      xb[i] = ddim_step_elem<kPrediction>(c, xb[i], mb[i], add_noise ? zb[i] : 0.0f, clip, clip_range, add_noise);
    }
    store_block(out.data_ptr(), xdt, b * N + e0, n, xb);
  });
}

at::Tensor ddim_step(const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& t, const at::Tensor& t_prev,
                     const at::Tensor& table_in, const c10::optional<at::Tensor>& noise_in,
                     const c10::optional<at::Tensor>& seed, int64_t sample_offset, double eta,
                     int64_t prediction_type, bool clip, double clip_range, double final_alpha_bar) {
  const char* op = "ddim_step";
  check_data(op, "x_t", x_in, x_in.device());
  check_batched(op, "x_t", x_in, 1);
  check_data(op, "model_out", m_in, x_in.device());
  check_same_shape(op, "model_out", m_in, x_in);
  TORCH_CHECK(eta >= 0.0, "ddpm_fast::", op, ": eta must be >= 0, got ", eta);
  check_noise(op, noise_in, seed, x_in, /*needed=*/eta > 0.0);
  check_offset(op, sample_offset);
  check_enum(op, "prediction_type", prediction_type, 3);
  const at::Tensor table = check_table(op, table_in, x_in.device());
  const int64_t B = x_in.size(0), T = table.size(0);
  const Timesteps ts(check_timestep(op, "t", t, B, T, x_in.device()));
  const Timesteps tps(check_timestep(op, "t_prev", t_prev, B, T, x_in.device(), /*lo=*/INT64_MIN));
  const at::Tensor x = x_in.contiguous(), m = m_in.contiguous();
  at::Tensor noise;
  NoiseSource src;
  if (noise_in.has_value()) {
    noise = noise_in->contiguous();
    src.noise = noise.data_ptr();
    src.noise_dt = dtype_code(noise);
  } else if (seed.has_value()) {
    src.key = key_of(*seed);
    src.sample_offset = sample_offset;
  }
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const float e = static_cast<float>(eta), cr = static_cast<float>(clip_range), fa = static_cast<float>(final_alpha_bar);
  switch (prediction_type) {
    case PRED_EPSILON: ddim_blocks<PRED_EPSILON>(x, m, src, ts, tps, table, e, clip, cr, fa, out); break;
    case PRED_SAMPLE: ddim_blocks<PRED_SAMPLE>(x, m, src, ts, tps, table, e, clip, cr, fa, out); break;
    default: ddim_blocks<PRED_V>(x, m, src, ts, tps, table, e, clip, cr, fa, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) { m.impl("ddim_step", &ddim_step); }

}  // namespace cpu
}  // namespace ddpm_fast
