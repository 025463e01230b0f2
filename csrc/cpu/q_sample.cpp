// CPU kernels of q_sample (given noise) and q_sample_seeded (noise from Philox stream 2, plus the
// training target). Non-contiguous inputs are copied to contiguous; outputs are contiguous.
#include <torch/library.h>

#include "../op_checks.h"
#include "cpu_common.h"
#include "simd_path.h"
#include "ddpm_fast/step_math.h"

namespace ddpm_fast {
namespace cpu {
namespace {

at::Tensor q_sample(const at::Tensor& x0_in, const at::Tensor& t, const at::Tensor& table_in,
                    const at::Tensor& noise_in) {
  const char* op = "q_sample";
  const ScheduleArgs a = check_q_sample_args(op, x0_in, t, table_in, noise_in);
  const at::Tensor& table = a.table;
  const int64_t B = x0_in.size(0), N = per_sample(x0_in), T = table.size(0);
  const Timesteps ts(a.t);
  const at::Tensor x0 = x0_in.contiguous(), noise = noise_in.contiguous();
  at::Tensor out = at::empty_like(x0, at::MemoryFormat::Contiguous);
  const int dt = dtype_code(x0), ndt = dtype_code(noise);
  const double* tab = table.data_ptr<double>();
  for_each_block(B, N, [&](int64_t b, int64_t e0, int64_t n) {
    alignas(64) float xb[kBlock], zb[kBlock];
    const QCoefs c = q_coefs(tab, ts(b), T);
    const int64_t off = b * N + e0;
    run_on_simd_path([&]() DDPM_FAST_INLINE_LAMBDA {  // the block's loads, math and store: simd_path.h
      const float* xv = block_in(x0.data_ptr(), dt, off, n, xb);
      const float* zv = block_in(noise.data_ptr(), ndt, off, n, zb);
      float* ov = block_out(out.data_ptr(), dt, off, xb);  // a new tensor, or xb (read before written)
#pragma GCC ivdep
      for (int64_t i = 0; i < n; ++i) ov[i] = q_sample_elem(c, xv[i], zv[i]);
      block_out_done(out.data_ptr(), dt, off, n, xb);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> q_sample_seeded(const at::Tensor& x0_in, const at::Tensor& t,
                                                   const at::Tensor& table_in, const at::Tensor& seed,
                                                   int64_t sample_offset, int64_t target_type) {
  const char* op = "q_sample_seeded";
  const ScheduleArgs a = check_q_sample_seeded_args(op, x0_in, t, table_in, seed, sample_offset, target_type);
  const at::Tensor& table = a.table;
  const int64_t B = x0_in.size(0), N = per_sample(x0_in), T = table.size(0);
  const Timesteps ts(a.t);
  const at::Tensor x0 = x0_in.contiguous();
  at::Tensor x_t = at::empty_like(x0, at::MemoryFormat::Contiguous);
  at::Tensor target = at::empty_like(x0, at::MemoryFormat::Contiguous);
  const int dt = dtype_code(x0);
  const double* tab = table.data_ptr<double>();
  const PhiloxKey key = key_of(seed);
  const int tt = static_cast<int>(target_type);
  for_each_block(B, N, [&](int64_t b, int64_t e0, int64_t n) {
    alignas(64) float xb[kBlock], zb[kBlock], ob[kBlock];
    const int64_t tb = ts(b);
    const QCoefs c = q_coefs(tab, tb, T);
    fill_normal(key, e0, n, sample_index(key, sample_offset, b), static_cast<uint32_t>(tb), STREAM_Q_SAMPLE, zb);
    const int64_t off = b * N + e0;
    run_on_simd_path([&]() DDPM_FAST_INLINE_LAMBDA {  // x_t and target: new tensors, written in place when float32
      const float* xv = block_in(x0.data_ptr(), dt, off, n, xb);
      float* ov = block_out(x_t.data_ptr(), dt, off, ob);
      for (int64_t i = 0; i < n; ++i) ov[i] = q_sample_elem(c, xv[i], zb[i]);
      block_out_done(x_t.data_ptr(), dt, off, n, ob);
      ov = block_out(target.data_ptr(), dt, off, ob);
      for (int64_t i = 0; i < n; ++i) ov[i] = q_target_elem(c, xv[i], zb[i], tt);
      block_out_done(target.data_ptr(), dt, off, n, ob);
    });
  });
  return {x_t, target};
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("q_sample", &q_sample);
  m.impl("q_sample_seeded", &q_sample_seeded);
}

}  // namespace cpu
}  // namespace ddpm_fast
