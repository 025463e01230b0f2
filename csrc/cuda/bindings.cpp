// The torch-facing side of the CUDA kernels: checks (shared with the CPU kernels), contiguous
// copies of non-contiguous inputs, output allocation, the current stream, and the launchers of
// csrc/cuda/*.cu. Timestep, seed and table stay on the device: nothing here syncs with the host
// (an out-of-range timestep gives NaN in the kernel instead of an error).
// Only the stream and device-guard headers of c10: ATen/cuda/CUDAContext.h would pull in cuBLAS,
// cuSPARSE and cuSOLVER headers that nothing here uses.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../op_checks.h"
#include "ddpm_fast/cuda_launchers.h"

namespace ddpm_fast {
namespace cuda {
namespace {

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "ddpm_fast::", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

TimestepArg timestep_arg(const at::Tensor& t) {
  return TimestepArg{t.data_ptr(), t.scalar_type() == at::kLong, t.numel() == 1 ? 0 : 1};
}

TableArg table_arg(const at::Tensor& table) { return TableArg{table.data_ptr<double>(), table.size(0)}; }

// A checked seed (int64 [] / [1], or [2] = (key, sample offset)); read by the kernels only.
SeedArg seed_arg(const at::Tensor& seed) { return SeedArg{seed.data_ptr<int64_t>(), seed.numel() == 2}; }

at::Tensor philox4x32_10_words(const at::Tensor& counters, const at::Tensor& key) {
  const char* op = "_philox4x32_10";
  check_philox_words_args(op, counters, key);
  const c10::cuda::CUDAGuard guard(counters.device());
  const at::Tensor c = counters.contiguous(), k = key.contiguous();
  at::Tensor out = at::empty_like(c, at::MemoryFormat::Contiguous);
  check_launch(op, launch_philox_words(c.data_ptr<int64_t>(), k.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
                                       c.size(0), c10::cuda::getCurrentCUDAStream()));
  return out;
}

// philox_normal (kNormal) / philox_uniform.
template <bool kNormal>
at::Tensor philox(const at::Tensor& seed, const at::Tensor& t, int64_t batch, int64_t numel, int64_t sample_offset,
                  int64_t stream) {
  const char* op = kNormal ? "philox_normal" : "philox_uniform";
  const at::Tensor tc = check_philox_args(op, seed, t, batch, numel, sample_offset, stream);
  const c10::cuda::CUDAGuard guard(seed.device());
  const at::Tensor sc = seed.contiguous();
  at::Tensor out = at::empty({batch, numel}, seed.options().dtype(at::kFloat));
  check_launch(op, launch_philox(out.data_ptr<float>(), kNormal, seed_arg(sc), timestep_arg(tc), batch,
                                 numel, sample_offset, stream, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor q_sample(const at::Tensor& x0_in, const at::Tensor& t, const at::Tensor& table_in,
                    const at::Tensor& noise_in) {
  const char* op = "q_sample";
  const ScheduleArgs a = check_q_sample_args(op, x0_in, t, table_in, noise_in);
  const c10::cuda::CUDAGuard guard(x0_in.device());
  const at::Tensor x0 = x0_in.contiguous(), noise = noise_in.contiguous();
  at::Tensor out = at::empty_like(x0, at::MemoryFormat::Contiguous);
  check_launch(op, launch_q_sample(out.data_ptr(), x0.data_ptr(), dtype_code(x0), noise.data_ptr(), dtype_code(noise),
                                   timestep_arg(a.t), table_arg(a.table), x0.size(0), per_sample(x0),
                                   c10::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> q_sample_seeded(const at::Tensor& x0_in, const at::Tensor& t,
                                                   const at::Tensor& table_in, const at::Tensor& seed,
                                                   int64_t sample_offset, int64_t target_type) {
  const char* op = "q_sample_seeded";
  const ScheduleArgs a = check_q_sample_seeded_args(op, x0_in, t, table_in, seed, sample_offset, target_type);
  const c10::cuda::CUDAGuard guard(x0_in.device());
  const at::Tensor x0 = x0_in.contiguous(), sc = seed.contiguous();
  at::Tensor x_t = at::empty_like(x0, at::MemoryFormat::Contiguous);
  at::Tensor target = at::empty_like(x0, at::MemoryFormat::Contiguous);
  check_launch(op, launch_q_sample_seeded(x_t.data_ptr(), target.data_ptr(), x0.data_ptr(), dtype_code(x0),
                                          timestep_arg(a.t), table_arg(a.table), seed_arg(sc),
                                          sample_offset, static_cast<int>(target_type), x0.size(0), per_sample(x0),
                                          c10::cuda::getCurrentCUDAStream()));
  return {x_t, target};
}

// The noise source of a checked reverse_step / ddim_step (noise or seed kept alive in `holder`).
NoiseArg noise_arg(const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& seed,
                   int64_t sample_offset, at::Tensor& holder) {
  NoiseArg arg{nullptr, DT_FLOAT32, SeedArg{nullptr, false}, sample_offset};
  if (noise.has_value()) {
    holder = noise->contiguous();
    arg.noise = holder.data_ptr();
    arg.noise_dtype = dtype_code(holder);
  } else if (seed.has_value()) {
    holder = seed->contiguous();
    arg.seed = seed_arg(holder);
  }
  return arg;
}

// The NaN record's device int64 (checked by check_step_out), or nullptr.
int64_t* first_bad_ptr(const c10::optional<at::Tensor>& first_bad) {
  return first_bad.has_value() ? first_bad->data_ptr<int64_t>() : nullptr;
}

// Writes x_{t-1} of checked inputs into `out` (contiguous, x_t's dtype and shape), and the NaN
// record into first_bad when given.
void reverse_step_into(const char* op, const at::Tensor& x_in, const at::Tensor& m_in, const ScheduleArgs& a,
                       const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& seed,
                       int64_t sample_offset, int64_t prediction_type, int64_t variance_type, bool clip,
                       double clip_range, const c10::optional<double>& guidance_scale, at::Tensor& out,
                       const c10::optional<at::Tensor>& first_bad = c10::nullopt) {
  const at::Tensor x = x_in.contiguous(), m = m_in.contiguous();
  at::Tensor holder;
  const NoiseArg na = noise_arg(noise, seed, sample_offset, holder);
  check_launch(op, launch_reverse_step(out.data_ptr(), x.data_ptr(), dtype_code(x), m.data_ptr(), dtype_code(m), na,
                                       timestep_arg(a.t), table_arg(a.table), static_cast<int>(prediction_type),
                                       static_cast<int>(variance_type), clip, static_cast<float>(clip_range),
                                       guidance_scale.has_value(), static_cast<float>(guidance_scale.value_or(0.0)),
                                       first_bad_ptr(first_bad), x.size(0), per_sample(x),
                                       c10::cuda::getCurrentCUDAStream()));
}

at::Tensor reverse_step(const at::Tensor& x_t, const at::Tensor& model_out, const at::Tensor& t,
                        const at::Tensor& table, const c10::optional<at::Tensor>& noise,
                        const c10::optional<at::Tensor>& seed, int64_t sample_offset, int64_t prediction_type,
                        int64_t variance_type, bool clip, double clip_range, c10::optional<double> guidance_scale) {
  const char* op = "reverse_step";
  const ScheduleArgs a = check_reverse_step_args(op, x_t, model_out, t, table, noise, seed, sample_offset,
                                                 prediction_type, variance_type, clip_range, guidance_scale);
  const c10::cuda::CUDAGuard guard(x_t.device());
  at::Tensor out = at::empty_like(x_t, at::MemoryFormat::Contiguous);
  reverse_step_into(op, x_t, model_out, a, noise, seed, sample_offset, prediction_type, variance_type, clip,
                    clip_range, guidance_scale, out);
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
  const c10::cuda::CUDAGuard guard(x_t.device());
  write_step_out(x_t, out, [&](at::Tensor& dst) {
    reverse_step_into(op, x_t, model_out, a, noise, seed, sample_offset, prediction_type, variance_type, clip,
                      clip_range, guidance_scale, dst, first_bad);
  });
}

// Writes x_{t_prev} of checked inputs into `out` (contiguous, x_t's dtype and shape), and the NaN
// record into first_bad when given.
void ddim_step_into(const char* op, const at::Tensor& x_in, const at::Tensor& m_in, const ScheduleArgs& a,
                    const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& seed,
                    int64_t sample_offset, double eta, int64_t prediction_type, bool clip, double clip_range,
                    double final_alpha_bar, const c10::optional<double>& guidance_scale, at::Tensor& out,
                    const c10::optional<at::Tensor>& first_bad = c10::nullopt) {
  const at::Tensor x = x_in.contiguous(), m = m_in.contiguous();
  at::Tensor holder;
  const NoiseArg na = noise_arg(noise, seed, sample_offset, holder);
  check_launch(op, launch_ddim_step(out.data_ptr(), x.data_ptr(), dtype_code(x), m.data_ptr(), dtype_code(m), na,
                                    timestep_arg(a.t), timestep_arg(a.t_prev), table_arg(a.table),
                                    static_cast<float>(eta), static_cast<int>(prediction_type), clip,
                                    static_cast<float>(clip_range), static_cast<float>(final_alpha_bar),
                                    guidance_scale.has_value(), static_cast<float>(guidance_scale.value_or(0.0)),
                                    first_bad_ptr(first_bad), x.size(0), per_sample(x),
                                    c10::cuda::getCurrentCUDAStream()));
}

at::Tensor ddim_step(const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& t, const at::Tensor& t_prev,
                     const at::Tensor& table_in, const c10::optional<at::Tensor>& noise,
                     const c10::optional<at::Tensor>& seed, int64_t sample_offset, double eta, int64_t prediction_type,
                     bool clip, double clip_range, double final_alpha_bar, c10::optional<double> guidance_scale) {
  const char* op = "ddim_step";
  const ScheduleArgs a =
      check_ddim_step_args(op, x_in, m_in, t, t_prev, table_in, noise, seed, sample_offset, eta, prediction_type,
                           clip_range, final_alpha_bar, guidance_scale);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor out = at::empty_like(x_in, at::MemoryFormat::Contiguous);
  ddim_step_into(op, x_in, m_in, a, noise, seed, sample_offset, eta, prediction_type, clip, clip_range,
                 final_alpha_bar, guidance_scale, out);
  return out;
}

void ddim_step_out(const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& t, const at::Tensor& t_prev,
                   const at::Tensor& table_in, const c10::optional<at::Tensor>& noise,
                   const c10::optional<at::Tensor>& seed, int64_t sample_offset, double eta, int64_t prediction_type,
                   bool clip, double clip_range, double final_alpha_bar, c10::optional<double> guidance_scale,
                   at::Tensor out, const c10::optional<at::Tensor>& first_bad) {
  const char* op = "ddim_step_out";
  const ScheduleArgs a =
      check_ddim_step_args(op, x_in, m_in, t, t_prev, table_in, noise, seed, sample_offset, eta, prediction_type,
                           clip_range, final_alpha_bar, guidance_scale);
  check_step_out(op, x_in, out, first_bad);
  const c10::cuda::CUDAGuard guard(x_in.device());
  write_step_out(x_in, out, [&](at::Tensor& dst) {
    ddim_step_into(op, x_in, m_in, a, noise, seed, sample_offset, eta, prediction_type, clip, clip_range,
                   final_alpha_bar, guidance_scale, dst, first_bad);
  });
}

at::Tensor temb_add(const at::Tensor& h_in, const at::Tensor& temb_in) {
  const char* op = "temb_add";
  check_temb_add_args(op, h_in, temb_in);
  const c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous(), temb = temb_in.contiguous();
  at::Tensor out = at::empty_like(h, at::MemoryFormat::Contiguous);
  const int64_t B = h.size(0), C = h.size(1), HW = B * C == 0 ? 0 : h.numel() / (B * C);
  check_launch(op, launch_temb_add(out.data_ptr(), h.data_ptr(), dtype_code(h), temb.data_ptr(), dtype_code(temb), B,
                                   C, HW, c10::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> multistep_update(const at::Tensor& x_in, const at::Tensor& m_in,
                                                    const at::Tensor& h_in, const at::Tensor& table_in,
                                                    const at::Tensor& step_in,
                                                    c10::optional<double> guidance_scale) {
  const char* op = "multistep_update";
  const MultistepArgs a = check_multistep_update_args(op, x_in, m_in, h_in, table_in, step_in, guidance_scale);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), m = m_in.contiguous(), h = h_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor x0 = at::empty_like(x, at::MemoryFormat::Contiguous);
  const TimestepArg step{a.step.data_ptr(), a.step.scalar_type() == at::kLong, 0};
  check_launch(op, launch_multistep_update(out.data_ptr(), x0.data_ptr(), x.data_ptr(), dtype_code(x), m.data_ptr(),
                                           dtype_code(m), h.data_ptr(), dtype_code(h), h.size(0),
                                           a.table.data_ptr<double>(), a.table.size(0), step, x.numel(),
                                           guidance_scale.has_value(),
                                           static_cast<float>(guidance_scale.value_or(0.0)),
                                           c10::cuda::getCurrentCUDAStream()));
  return {out, x0};
}

at::Tensor groupnorm_temb_silu(const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
                               const c10::optional<at::Tensor>& temb_in, int64_t num_groups, double eps,
                               int64_t temb_mode, bool apply_silu) {
  const char* op = "groupnorm_temb_silu";
  const GroupNormSizes s = check_groupnorm_temb_silu_args(op, x_in, weight_in, bias_in, temb_in, num_groups, eps,
                                                          temb_mode);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = weight_in.contiguous(), b = bias_in.contiguous();
  at::Tensor temb;
  if (temb_mode != TEMB_NONE) temb = temb_in->contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  // scratch from torch's caching allocator, on the current stream like the launch
  const at::Tensor workspace =
      at::empty({groupnorm_temb_silu_workspace_floats(s.B, s.C, s.HW, num_groups)}, x.options().dtype(at::kFloat));
  check_launch(op, launch_groupnorm_temb_silu(
                       out.data_ptr(), x.data_ptr(), dtype_code(x), w.data_ptr(), dtype_code(w), b.data_ptr(),
                       dtype_code(b), temb_mode != TEMB_NONE ? temb.data_ptr() : nullptr,
                       temb_mode != TEMB_NONE ? dtype_code(temb) : DT_FLOAT32, s.B, s.C, s.HW, num_groups,
                       static_cast<float>(eps), static_cast<int>(temb_mode), apply_silu,
                       workspace.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CUDA, m) {
  m.impl("_philox4x32_10", &philox4x32_10_words);
  m.impl("philox_normal", &philox<true>);
  m.impl("philox_uniform", &philox<false>);
  m.impl("q_sample", &q_sample);
  m.impl("q_sample_seeded", &q_sample_seeded);
  m.impl("reverse_step", &reverse_step);
  m.impl("reverse_step_out", &reverse_step_out);
  m.impl("ddim_step", &ddim_step);
  m.impl("ddim_step_out", &ddim_step_out);
  m.impl("multistep_update", &multistep_update);
  m.impl("temb_add", &temb_add);
  m.impl("groupnorm_temb_silu", &groupnorm_temb_silu);
}

}  // namespace cuda
}  // namespace ddpm_fast
