// CPU kernels of philox_normal / philox_uniform: the raw noise streams, float32 [batch, numel].
#include <torch/library.h>

#include "../op_checks.h"
#include "cpu_common.h"

namespace ddpm_fast {
namespace cpu {
namespace {

// philox_normal (kNormal) / philox_uniform.
template <bool kNormal>
at::Tensor philox(const at::Tensor& seed, const at::Tensor& t, int64_t batch, int64_t numel, int64_t sample_offset,
                  int64_t stream) {
  const char* op = kNormal ? "philox_normal" : "philox_uniform";
  const Timesteps ts(check_philox_args(op, seed, t, batch, numel, sample_offset, stream));
  at::Tensor out = at::empty({batch, numel}, seed.options().dtype(at::kFloat));
  const PhiloxKey key = key_of(seed);
  float* o = out.data_ptr<float>();
  for_each_block(batch, numel, [&](int64_t b, int64_t e0, int64_t n) {
    alignas(64) float buf[kBlock];
    const uint32_t c1 = sample_index(key, sample_offset, b), c2 = static_cast<uint32_t>(ts(b));
    if (kNormal) {
      fill_normal(key, e0, n, c1, c2, static_cast<uint32_t>(stream), buf);
    } else {
      fill_uniform(key, e0, n, c1, c2, static_cast<uint32_t>(stream), buf);
    }
    std::memcpy(o + b * numel + e0, buf, n * sizeof(float));
  });
  return out;
}

at::Tensor philox4x32_10_words(const at::Tensor& counters_in, const at::Tensor& key_in) {
  const char* op = "_philox4x32_10";
  check_philox_words_args(op, counters_in, key_in);
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
  m.impl("philox_normal", &philox<true>);
  m.impl("philox_uniform", &philox<false>);
  m.impl("_philox4x32_10", &philox4x32_10_words);
}

}  // namespace cpu
}  // namespace ddpm_fast
