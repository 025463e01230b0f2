// Input checks shared by the CPU kernels and the CUDA binding: every op fails with a clear
// message naming the op and the argument. Checks that read tensor values (timestep range) run
// only for CPU tensors; on CUDA an out-of-range timestep yields NaN instead (no host sync).
#pragma once

#include <string>

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

// Seed: one int64 value on the data's device.
inline void check_seed(const char* op, const at::Tensor& seed, const at::Device& device) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1, "ddpm_fast::", op,
              ": seed must be one int64 value, got ", seed.scalar_type(), " ", seed.sizes());
  TORCH_CHECK(seed.device() == device, "ddpm_fast::", op, ": seed is on ", seed.device(),
              " but the data is on ", device);
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

inline void check_offset(const char* op, int64_t sample_offset) {
  TORCH_CHECK(sample_offset >= 0, "ddpm_fast::", op, ": sample_offset must be >= 0, got ", sample_offset);
}

// Feature map [B, C, *spatial] and its [B, C] time embedding.
inline void check_temb(const char* op, const at::Tensor& temb, const at::Tensor& h) {
  check_data(op, "temb", temb, h.device());
  TORCH_CHECK(temb.dim() == 2 && temb.size(0) == h.size(0) && temb.size(1) == h.size(1), "ddpm_fast::", op,
              ": temb must have shape [B, C] = [", h.size(0), ", ", h.size(1), "], got ", temb.sizes());
}

inline int64_t numel_per_sample(const at::Tensor& x) { return x.dim() == 0 || x.size(0) == 0 ? 0 : x.numel() / x.size(0); }

}  // namespace ddpm_fast
