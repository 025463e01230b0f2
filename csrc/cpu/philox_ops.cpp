// CPU kernels of philox_normal / philox_uniform: the raw noise streams, float32 [batch, numel].
#include <torch/library.h>

#include "../op_checks.h"
#include "cpu_common.h"

namespace ddpm_fast {
namespace cpu {
namespace {

at::Tensor philox_cpu(const char* op, bool normal, const at::Tensor& seed, const at::Tensor& t, int64_t batch,
                      int64_t numel, int64_t sample_offset, int64_t stream) {
  TORCH_CHECK(batch >= 0 && numel >= 0, "ddpm_fast::", op, ": batch and numel must be >= 0, got ", batch, ", ",
              numel);
  TORCH_CHECK(stream >= 0 && stream < (int64_t(1) << 32), "ddpm_fast::", op, ": stream must be in [0, 2**32), got ",
              stream);
  check_offset(op, sample_offset);
  check_seed(op, seed, seed.device());
  const Timesteps ts(check_timestep(op, "t", t, batch, int64_t(1) << 32, seed.device()));
  at::Tensor out = at::empty({batch, numel}, seed.options().dtype(at::kFloat));
  const PhiloxKey key = key_of(seed);
  float* o = out.data_ptr<float>();
  for_each_block(batch, numel, [&](int64_t b, int64_t e0, int64_t n) {
    alignas(64) float buf[kBlock];
    const uint32_t c1 = static_cast<uint32_t>(sample_offset + b), c2 = static_cast<uint32_t>(ts(b));
    if (normal) {
      fill_normal(key, e0, n, c1, c2, static_cast<uint32_t>(stream), buf);
    } else {
      fill_uniform(key, e0, n, c1, c2, static_cast<uint32_t>(stream), buf);
    }
    std::memcpy(o + b * numel + e0, buf, n * sizeof(float));
  });
  return out;
}

at::Tensor philox_normal(const at::Tensor& seed, const at::Tensor& t, int64_t batch, int64_t numel,
                         int64_t sample_offset, int64_t stream) {
  return philox_cpu("philox_normal", true, seed, t, batch, numel, sample_offset, stream);
}

at::Tensor philox_uniform(const at::Tensor& seed, const at::Tensor& t, int64_t batch, int64_t numel,
                          int64_t sample_offset, int64_t stream) {
  return philox_cpu("philox_uniform", false, seed, t, batch, numel, sample_offset, stream);
}

at::Tensor philox4x32_10_words(const at::Tensor& counters_in, const at::Tensor& key_in) {
  const char* op = "_philox4x32_10";
  TORCH_CHECK(counters_in.scalar_type() == at::kLong && counters_in.dim() == 2 && counters_in.size(1) == 4,
              "ddpm_fast::", op, ": counters must be int64 [n, 4], got ", counters_in.scalar_type(), " ",
              counters_in.sizes());
  TORCH_CHECK(key_in.scalar_type() == at::kLong && key_in.numel() == 2, "ddpm_fast::", op,
              ": key must be int64 [2], got ", key_in.scalar_type(), " ", key_in.sizes());
  const at::Tensor c = counters_in.contiguous(), k = key_in.contiguous();
  at::Tensor out = at::empty_like(c, at::MemoryFormat::Contiguous);
  const int64_t* cp = c.data_ptr<int64_t>();
  const int64_t* kp = k.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < c.size(0); ++i) {
    const Philox4 p = philox4x32_10(static_cast<uint32_t>(cp[4 * i]), static_cast<uint32_t>(cp[4 * i + 1]),
                                    static_cast<uint32_t>(cp[4 * i + 2]), static_cast<uint32_t>(cp[4 * i + 3]),
                                    static_cast<uint32_t>(kp[0]), static_cast<uint32_t>(kp[1]));
    for (int j = 0; j < 4; ++j) o[4 * i + j] = p.w[j];
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("philox_normal", &philox_normal);
  m.impl("philox_uniform", &philox_uniform);
  m.impl("_philox4x32_10", &philox4x32_10_words);
}

}  // namespace cpu
}  // namespace ddpm_fast
