// Input checks shared by the CPU kernels and the CUDA binding: every op fails with a clear
// message naming the op and the argument. Checks that read tensor values (timestep range) run
// only for CPU tensors; on CUDA an out-of-range timestep yields NaN instead (no host sync).
// Beside them, the two helpers both sides share: per_sample (the [B, N] view of a tensor) and
// write_step_out (the out-variants' write).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "ddpm_fast/enums.h"
#include "ddpm_fast/schedule_columns.h"

namespace ddpm_fast {

inline int dtype_code(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return DT_FLOAT32;
    case at::kHalf: return DT_FLOAT16;
    case at::kBFloat16: return DT_BFLOAT16;
    default: return -1;
  }
}

// Elements per sample of a [B, ...] tensor (the N of the kernels' [B, N] view).
inline int64_t per_sample(const at::Tensor& x) {
  int64_t n = 1;
  for (int64_t d = 1; d < x.dim(); ++d) n *= x.size(d);
  return n;
}

inline void check_data(const char* op, const char* name, const at::Tensor& x, const at::Device& device) {
  TORCH_CHECK(dtype_code(x) >= 0, "ddpm_fast::", op, ": ", name,
              " must be float32, float16 or bfloat16, got ", x.scalar_type(),
              " (the reference backend handles float64)");
  TORCH_CHECK(x.device() == device, "ddpm_fast::", op, ": ", name, " is on ", x.device(),
              " but the data is on ", device);
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& x, const at::Tensor& ref) {
  TORCH_CHECK(x.sizes() == ref.sizes(), "ddpm_fast::", op, ": ", name, " has shape ", x.sizes(),
              " but the data has shape ", ref.sizes());
}

// model_out of a step: x's shape, or [2B, ...] with classifier-free guidance (conditional rows
// first), whose scale must be finite (the message of ops/validate.py check_param).
inline void check_model_out(const char* op, const at::Tensor& m, const at::Tensor& x,
                            const c10::optional<double>& guidance_scale) {
  check_data(op, "model_out", m, x.device());
  if (!guidance_scale.has_value()) {
    check_same_shape(op, "model_out", m, x);
    return;
  }
  TORCH_CHECK(std::isfinite(*guidance_scale), "ddpm_fast::", op,
              ": guidance_scale must be a finite number in (-inf, inf), got ", *guidance_scale);
  std::vector<int64_t> want = x.sizes().vec();
  want[0] *= 2;
  TORCH_CHECK(m.sizes() == at::IntArrayRef(want), "ddpm_fast::", op,
              ": with guidance_scale, model_out must be [2B, ...] = ", at::IntArrayRef(want),
              " (conditional rows first), got ", m.sizes());
}

inline void check_batched(const char* op, const char* name, const at::Tensor& x, int64_t min_dim) {
  TORCH_CHECK(x.dim() >= min_dim, "ddpm_fast::", op, ": ", name, " must have at least ", min_dim,
              " dims [B, ...], got shape ", x.sizes());
}

// Schedule table: float64 [T, 16] on the data's device. Returns it contiguous.
inline at::Tensor check_table(const char* op, const at::Tensor& table, const at::Device& device) {
  TORCH_CHECK(table.scalar_type() == at::kDouble && table.dim() == 2 && table.size(1) == kTableWidth,
              "ddpm_fast::", op, ": table must be float64 [T, ", kTableWidth, "], got ", table.scalar_type(),
              " ", table.sizes());
  TORCH_CHECK(table.size(0) > 0, "ddpm_fast::", op, ": table is empty");
  TORCH_CHECK(table.device() == device, "ddpm_fast::", op, ": table is on ", table.device(),
              " but the data is on ", device);
  return table.contiguous();
}

// Timestep: int32/int64 [] or [B] (or [1]) on the data's device; on the CPU every value must lie
// in [lo, T). Returns it contiguous.
inline at::Tensor check_timestep(const char* op, const char* name, const at::Tensor& t, int64_t B, int64_t T,
                                 const at::Device& device, int64_t lo = 0) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, "ddpm_fast::", op, ": ", name,
              " must be int32 or int64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 0 || (t.dim() == 1 && (t.numel() == 1 || t.numel() == B)), "ddpm_fast::", op, ": ",
              name, " must have shape [] or [", B, "], got ", t.sizes());
  TORCH_CHECK(t.device() == device, "ddpm_fast::", op, ": ", name, " is on ", t.device(),
              " but the data is on ", device);
  at::Tensor tc = t.contiguous();
  if (tc.device().is_cpu() && tc.numel() > 0) {
    const int64_t n = tc.numel();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = tc.scalar_type() == at::kLong ? tc.data_ptr<int64_t>()[i]
                                                      : static_cast<int64_t>(tc.data_ptr<int32_t>()[i]);
      TORCH_CHECK(v >= lo && v < T, "ddpm_fast::", op, ": ", name, " = ", v, " is out of range [", lo, ", ",
                  T, ")");
    }
  }
  return tc;
}

// Seed: int64 [] / [1] (the key) or [2] = (key, device sample offset), on the data's device.
inline void check_seed(const char* op, const at::Tensor& seed, const at::Device& device) {
  TORCH_CHECK(seed.scalar_type() == at::kLong &&
                  ((seed.numel() == 1 && seed.dim() <= 1) || (seed.dim() == 1 && seed.size(0) == 2)),
              "ddpm_fast::", op, ": seed must be int64 [], [1] or [2] (key, sample offset), got ",
              seed.scalar_type(), " ", seed.sizes());
  TORCH_CHECK(seed.device() == device, "ddpm_fast::", op, ": seed is on ", seed.device(),
              " but the data is on ", device);
}

// Float parameters, with the messages of ops/validate.py check_param.
inline void check_clip_range(const char* op, double clip_range) {
  TORCH_CHECK(clip_range > 0.0, "ddpm_fast::", op, ": clip_range must be a number in (0, inf), got ", clip_range);
}

inline void check_nonnegative_finite(const char* op, const char* name, double v) {
  TORCH_CHECK(std::isfinite(v) && v >= 0.0, "ddpm_fast::", op, ": ", name, " must be a finite number in [0, inf), got ",
              v);
}

inline void check_positive_finite(const char* op, const char* name, double v) {
  TORCH_CHECK(std::isfinite(v) && v > 0.0, "ddpm_fast::", op, ": ", name, " must be a finite number in (0, inf), got ",
              v);
}

inline void check_enum(const char* op, const char* name, int64_t v, int64_t n) {
  TORCH_CHECK(v >= 0 && v < n, "ddpm_fast::", op, ": ", name, " must be in [0, ", n, "), got ", v);
}

// Noise source of a stochastic step: a noise tensor of x's shape, or a seed; never both.
inline void check_noise(const char* op, const c10::optional<at::Tensor>& noise,
                        const c10::optional<at::Tensor>& seed, const at::Tensor& x, bool needed) {
  TORCH_CHECK(!(noise.has_value() && seed.has_value()), "ddpm_fast::", op, ": give noise or seed, not both");
  if (noise.has_value()) {
    check_data(op, "noise", *noise, x.device());
    check_same_shape(op, "noise", *noise, x);
  } else if (seed.has_value()) {
    check_seed(op, *seed, x.device());
  } else {
    TORCH_CHECK(!needed, "ddpm_fast::", op, ": a stochastic step needs noise or seed");
  }
}

// The sample index n = sample_offset [+ seed[1]] + b is one 32-bit Philox counter word
// (docs/ops_contract.md): a batch past 2**32 would give two samples the same noise. Same messages
// as ddpm_fast/noise.py check_sample_offset. A seed [2] (checked) carries a device offset seed[1]:
// read and checked here for a CPU seed; on a GPU it stays unread (no host sync) and the kernels
// take the index modulo 2**32.
inline void check_offset(const char* op, int64_t sample_offset, int64_t batch, const at::Tensor* seed = nullptr) {
  TORCH_CHECK(sample_offset >= 0, "ddpm_fast::", op, ": sample_offset must be an int >= 0, got ", sample_offset);
  TORCH_CHECK(sample_offset <= (int64_t(1) << 32) - batch, "ddpm_fast::", op,
              ": sample_offset + batch must be <= 2**32 (the sample index is one 32-bit Philox counter word), "
              "got sample_offset=", sample_offset, ", batch=", batch);
  if (seed == nullptr || seed->numel() != 2 || !seed->device().is_cpu()) return;
  const int64_t k = seed->contiguous().data_ptr<int64_t>()[1];
  TORCH_CHECK(k >= 0, "ddpm_fast::", op, ": seed[1] (the device sample offset) must be >= 0, got ", k);
  TORCH_CHECK(k <= (int64_t(1) << 32) - batch - sample_offset, "ddpm_fast::", op,
              ": sample_offset + seed[1] + batch must be <= 2**32 (the sample index is one 32-bit Philox counter "
              "word), got sample_offset=", sample_offset, ", seed[1]=", k, ", batch=", batch);
}

// Feature map [B, C, *spatial] and its [B, C] time embedding.
inline void check_temb(const char* op, const at::Tensor& temb, const at::Tensor& h) {
  check_data(op, "temb", temb, h.device());
  TORCH_CHECK(temb.dim() == 2 && temb.size(0) == h.size(0) && temb.size(1) == h.size(1), "ddpm_fast::", op,
              ": temb must have shape [B, C] = [", h.size(0), ", ", h.size(1), "], got ", temb.sizes());
}

// ---- One check function per op, called by the CPU kernel and the CUDA binding alike. They check
// in the order the messages are documented (data, shapes, scalars, then table and timesteps) and
// return what the kernels need, validated and contiguous.

// The schedule inputs of a step op once checked: table float64 [T, kTableWidth] and timestep(s)
// int32/int64 [] or [B], contiguous, on the data's device.
struct ScheduleArgs {
  at::Tensor table;
  at::Tensor t;
  at::Tensor t_prev;  // ddim_step only
};

inline ScheduleArgs check_schedule(const char* op, const at::Tensor& x, const at::Tensor& t, const at::Tensor& table) {
  ScheduleArgs a;
  a.table = check_table(op, table, x.device());
  a.t = check_timestep(op, "t", t, x.size(0), a.table.size(0), x.device());
  return a;
}

// Timesteps and streams of the raw noise ops are Philox counter words: [0, 2**32).
constexpr int64_t kCounterWordEnd = int64_t(1) << 32;

// philox_normal / philox_uniform. Returns t contiguous.
inline at::Tensor check_philox_args(const char* op, const at::Tensor& seed, const at::Tensor& t, int64_t batch,
                                    int64_t numel, int64_t sample_offset, int64_t stream) {
  TORCH_CHECK(batch >= 0 && numel >= 0, "ddpm_fast::", op, ": batch and numel must be >= 0, got ", batch, ", ",
              numel);
  TORCH_CHECK(stream >= 0 && stream < kCounterWordEnd, "ddpm_fast::", op, ": stream must be in [0, 2**32), got ",
              stream);
  check_seed(op, seed, seed.device());
  check_offset(op, sample_offset, batch, &seed);
  return check_timestep(op, "t", t, batch, kCounterWordEnd, seed.device());
}

// _philox4x32_10: counters int64 [n, 4], key int64 [2] on the counters' device.
inline void check_philox_words_args(const char* op, const at::Tensor& counters, const at::Tensor& key) {
  TORCH_CHECK(counters.scalar_type() == at::kLong && counters.dim() == 2 && counters.size(1) == 4, "ddpm_fast::", op,
              ": counters must be int64 [n, 4], got ", counters.scalar_type(), " ", counters.sizes());
  TORCH_CHECK(key.scalar_type() == at::kLong && key.numel() == 2, "ddpm_fast::", op, ": key must be int64 [2], got ",
              key.scalar_type(), " ", key.sizes());
  TORCH_CHECK(key.device() == counters.device(), "ddpm_fast::", op, ": key must be int64 [2] on the counters' device");
}

inline ScheduleArgs check_q_sample_args(const char* op, const at::Tensor& x0, const at::Tensor& t,
                                        const at::Tensor& table, const at::Tensor& noise) {
  check_data(op, "x0", x0, x0.device());
  check_batched(op, "x0", x0, 1);
  check_data(op, "noise", noise, x0.device());
  check_same_shape(op, "noise", noise, x0);
  return check_schedule(op, x0, t, table);
}

inline ScheduleArgs check_q_sample_seeded_args(const char* op, const at::Tensor& x0, const at::Tensor& t,
                                               const at::Tensor& table, const at::Tensor& seed, int64_t sample_offset,
                                               int64_t target_type) {
  check_data(op, "x0", x0, x0.device());
  check_batched(op, "x0", x0, 1);
  check_seed(op, seed, x0.device());
  check_offset(op, sample_offset, x0.size(0), &seed);
  check_enum(op, "target_type", target_type, 3);
  return check_schedule(op, x0, t, table);
}

// The outputs of a step's out-variant (reverse_step_out, ddim_step_out): `out` of x_t's dtype, shape
// and device; `first_bad`, the NaN record, one int64 value ([] or [1]) on the data's device (the
// messages of ops/validate.py check_first_bad and the Python front).
inline void check_step_out(const char* op, const at::Tensor& x, const at::Tensor& out,
                           const c10::optional<at::Tensor>& first_bad) {
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.sizes() == x.sizes() && out.device() == x.device(),
              "ddpm_fast::", op, ": out must be ", x.scalar_type(), " ", x.sizes(), " on ", x.device(), ", got ",
              out.scalar_type(), " ", out.sizes(), " on ", out.device());
  if (!first_bad.has_value()) return;
  TORCH_CHECK(first_bad->scalar_type() == at::kLong && first_bad->numel() == 1, "ddpm_fast::", op,
              ": first_bad must be one int64 value ([] or [1]), got ", first_bad->scalar_type(), " ",
              first_bad->sizes());
  TORCH_CHECK(first_bad->device() == x.device(), "ddpm_fast::", op, ": first_bad is on ", first_bad->device(),
              " but the data is on ", x.device());
}

// The write of a step's out-variant into its checked `out`: into(dst) writes x_t-shaped contiguous
// output into dst; dst is `out` itself when it is contiguous (it may be x_t: the kernels read every
// block before they write it), else a contiguous temporary like x that is then copied into out.
template <class Into>
inline void write_step_out(const at::Tensor& x, at::Tensor& out, const Into& into) {
  if (out.is_contiguous()) {
    into(out);
  } else {
    at::Tensor tmp = at::empty_like(x, at::MemoryFormat::Contiguous);
    into(tmp);
    out.copy_(tmp);
  }
}

// reverse_step and reverse_step_out (`out`: its output tensor, checked by check_step_out).
inline ScheduleArgs check_reverse_step_args(const char* op, const at::Tensor& x, const at::Tensor& m,
                                            const at::Tensor& t, const at::Tensor& table,
                                            const c10::optional<at::Tensor>& noise,
                                            const c10::optional<at::Tensor>& seed, int64_t sample_offset,
                                            int64_t prediction_type, int64_t variance_type, double clip_range,
                                            const c10::optional<double>& guidance_scale) {
  check_data(op, "x_t", x, x.device());
  check_batched(op, "x_t", x, 1);
  check_model_out(op, m, x, guidance_scale);
  check_noise(op, noise, seed, x, /*needed=*/true);
  check_offset(op, sample_offset, x.size(0), seed.has_value() ? &*seed : nullptr);
  check_enum(op, "prediction_type", prediction_type, 3);
  check_enum(op, "variance_type", variance_type, 2);
  check_clip_range(op, clip_range);
  return check_schedule(op, x, t, table);
}

// ddim_step; t_prev may be negative (the final step), so only its upper bound is checked.
inline ScheduleArgs check_ddim_step_args(const char* op, const at::Tensor& x, const at::Tensor& m,
                                         const at::Tensor& t, const at::Tensor& t_prev, const at::Tensor& table,
                                         const c10::optional<at::Tensor>& noise,
                                         const c10::optional<at::Tensor>& seed, int64_t sample_offset, double eta,
                                         int64_t prediction_type, double clip_range, double final_alpha_bar,
                                         const c10::optional<double>& guidance_scale) {
  check_data(op, "x_t", x, x.device());
  check_batched(op, "x_t", x, 1);
  check_model_out(op, m, x, guidance_scale);
  check_nonnegative_finite(op, "eta", eta);
  check_clip_range(op, clip_range);
  TORCH_CHECK(final_alpha_bar > 0.0 && final_alpha_bar <= 1.0, "ddpm_fast::", op,
              ": final_alpha_bar must be a number in (0, 1], got ", final_alpha_bar);
  check_noise(op, noise, seed, x, /*needed=*/eta > 0.0);
  check_offset(op, sample_offset, x.size(0), seed.has_value() ? &*seed : nullptr);
  check_enum(op, "prediction_type", prediction_type, 3);
  ScheduleArgs a = check_schedule(op, x, t, table);
  a.t_prev = check_timestep(op, "t_prev", t_prev, x.size(0), a.table.size(0), x.device(), /*lo=*/INT64_MIN);
  return a;
}

// multistep_update: x, model_out [B, ...] of one shape (model_out [2B, ...] with guidance_scale);
// history [K, *x.shape], K <= MS_MAX_HISTORY;
// table float64 [steps, MS_WIDTH]; step int32/int64 [] or [1] in [0, steps) (checked on the CPU).
struct MultistepArgs {
  at::Tensor table;
  at::Tensor step;
};

inline MultistepArgs check_multistep_update_args(const char* op, const at::Tensor& x, const at::Tensor& m,
                                                 const at::Tensor& history, const at::Tensor& table,
                                                 const at::Tensor& step,
                                                 const c10::optional<double>& guidance_scale) {
  check_data(op, "x", x, x.device());
  check_data(op, "history", history, x.device());
  check_batched(op, "x", x, 2);
  check_model_out(op, m, x, guidance_scale);
  TORCH_CHECK(history.dim() == x.dim() + 1 && history.size(0) <= MS_MAX_HISTORY &&
                  history.sizes().slice(1) == x.sizes(),
              "ddpm_fast::", op, ": history must have shape [K, *x.shape] with K <= ", int(MS_MAX_HISTORY),
              ", got ", history.sizes(), " for x of shape ", x.sizes());
  MultistepArgs a;
  TORCH_CHECK(table.scalar_type() == at::kDouble && table.dim() == 2 && table.size(1) == MS_WIDTH &&
                  table.size(0) > 0,
              "ddpm_fast::", op, ": table must be float64 [steps, ", int(MS_WIDTH), "], got ", table.scalar_type(),
              " ", table.sizes());
  TORCH_CHECK(table.device() == x.device(), "ddpm_fast::", op, ": table is on ", table.device(),
              " but the data is on ", x.device());
  a.table = table.contiguous();
  TORCH_CHECK(step.numel() == 1, "ddpm_fast::", op, ": step must have shape [] or [1], got ", step.sizes());
  a.step = check_timestep(op, "step", step, 1, a.table.size(0), x.device());
  return a;
}

inline void check_temb_add_args(const char* op, const at::Tensor& h, const at::Tensor& temb) {
  check_data(op, "h", h, h.device());
  check_batched(op, "h", h, 3);
  check_temb(op, temb, h);
}

// groupnorm_temb_silu: x [B, C, *spatial] viewed as [B, C, HW].
struct GroupNormSizes {
  int64_t B, C, HW;
};

inline GroupNormSizes check_groupnorm_temb_silu_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                                     const at::Tensor& bias, const c10::optional<at::Tensor>& temb,
                                                     int64_t num_groups, double eps, int64_t temb_mode) {
  check_data(op, "x", x, x.device());
  check_batched(op, "x", x, 3);
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(num_groups > 0 && C % num_groups == 0, "ddpm_fast::", op, ": num_groups must be a positive divisor of C=",
              C, ", got ", num_groups);
  check_data(op, "weight", weight, x.device());
  check_data(op, "bias", bias, x.device());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C, "ddpm_fast::", op, ": weight must have shape [", C, "], got ",
              weight.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == C, "ddpm_fast::", op, ": bias must have shape [", C, "], got ",
              bias.sizes());
  check_enum(op, "temb_mode", temb_mode, 3);
  TORCH_CHECK(temb_mode == TEMB_NONE || temb.has_value(), "ddpm_fast::", op, ": temb_mode ", temb_mode,
              " needs a temb tensor");
  if (temb.has_value()) check_temb(op, *temb, x);
  check_positive_finite(op, "eps", eps);  // eps = 0 on a one-element group is 0/0
  return GroupNormSizes{B, C, B * C == 0 ? 0 : x.numel() / (B * C)};
}

// attention: q [B, H, Nq, D], k and v [B, H, Nk, D] (the messages of ddpm_fast/ops/__init__.py
// attention); scale finite.
inline void check_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 double scale) {
  check_data(op, "q", q, q.device());
  check_data(op, "k", k, q.device());
  check_data(op, "v", v, q.device());
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "ddpm_fast::", op,
              ": q, k and v must be [B, H, N, D], got shapes ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "ddpm_fast::", op, ": k and v must be [B, H, Nk, D] for q [B, H, Nq, D] = ", q.sizes(), ", got ",
              k.sizes(), " and ", v.sizes());
  TORCH_CHECK(std::isfinite(scale), "ddpm_fast::", op, ": scale must be a finite number in (-inf, inf), got ", scale);
}

// conv3x3: x [N, C, H, W], weight [K, C, 3, 3], bias [K] or none (the messages of
// ddpm_fast/ops/__init__.py conv3x3).
inline void check_conv3x3_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias) {
  check_data(op, "x", x, x.device());
  check_data(op, "weight", weight, x.device());
  TORCH_CHECK(x.dim() == 4, "ddpm_fast::", op, ": x must be [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 && weight.size(3) == 3,
              "ddpm_fast::", op, ": weight must be [K, C, 3, 3] with C = ", x.size(1), " (x's channels), got shape ",
              weight.sizes());
  if (bias.has_value()) {
    check_data(op, "bias", *bias, x.device());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "ddpm_fast::", op,
                ": bias must be [K] with K = ", weight.size(0), ", got shape ", bias->sizes());
  }
}

}  // namespace ddpm_fast
