// Building blocks of the CPU kernels: work is cut into blocks of kBlock elements of one sample;
// each block is converted to float32 into stack buffers, computed with plain float loops that the
// compiler vectorises, and converted back. Philox runs once per 4 elements (one counter), its
// words and normals in SIMD code dispatched at run time (philox_simd.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../op_checks.h"
#include "ddpm_fast/enums.h"
#include "ddpm_fast/philox.h"
#include "ddpm_fast/step_math.h"
#include "philox_simd.h"

namespace ddpm_fast {
namespace cpu {

// For the helpers the block loops call inside run_on_simd_path (simd_path.h): only what is inlined
// into the wrapper runs on the wider ISA, and GCC left model_block out of line (its NaN check then
// ran on SSE2: ~4% of a 64x3x32x32 sampling step).
#if defined(__GNUC__)
#define DDPM_FAST_BLOCK_INLINE inline __attribute__((always_inline))
#else
#define DDPM_FAST_BLOCK_INLINE inline
#endif

// 2048 floats = 8 KiB per buffer: three buffers stay in L1 with room to spare.
constexpr int64_t kBlock = 2048;
static_assert(kBlock % 4 == 0, "blocks must start on a Philox counter boundary");

// Dtype of a storage pointer, as a tag for templated loops.
template <class F>
inline void dispatch_dtype(int dt, F&& f) {
  switch (dt) {
    case DT_FLOAT32: f(float{}); break;
    case DT_FLOAT16: f(c10::Half{}); break;
    default: f(c10::BFloat16{}); break;
  }
}

template <class T>
inline float to_float(T v) { return static_cast<float>(v); }
template <>
inline float to_float<c10::BFloat16>(c10::BFloat16 v) {  // bf16 -> f32 is a shift: vectorises
  uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// float(src[i]) for one element.
inline float to_float_at(const void* src, int dt, int64_t i) {
  float v = 0.0f;
  dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    v = to_float<T>(static_cast<const T*>(src)[i]);
  });
  return v;
}

// dst[0:n] = float(src[off:off+n]); src has storage dtype dt.
inline void load_block(const void* src, int dt, int64_t off, int64_t n, float* dst) {
  dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* p = static_cast<const T*>(src) + off;
    for (int64_t i = 0; i < n; ++i) dst[i] = to_float<T>(p[i]);
  });
}

// dst[off:off+n] = src[0:n] rounded to dt (round to nearest even, as torch's .to()).
inline void store_block(void* dst, int dt, int64_t off, int64_t n, const float* src) {
  dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    T* p = static_cast<T*>(dst) + off;
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(src[i]);
  });
}

// Classifier-free guidance of a step op: the op's optional guidance_scale as the kernels take it.
struct Guide {
  bool guided;
  float w;
};

inline Guide guide_of(const c10::optional<double>& guidance_scale) {
  return Guide{guidance_scale.has_value(), guidance_scale.has_value() ? static_cast<float>(*guidance_scale) : 0.0f};
}

// True when v[0:n] holds a NaN or an inf: an element whose exponent field is all ones. An OR of
// integer compares, so the loop vectorises with SSE2 already (no float compare, nothing that
// depends on the FP environment). Measured on the 2-core EPYC, 2048 floats: 0.48 us, against
// 1.5 us for a max over the exponent fields (SSE2 has no unsigned 32-bit max).
DDPM_FAST_BLOCK_INLINE bool any_nonfinite(const float* v, int64_t n) {
  uint32_t acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, v + i, sizeof bits);
    acc |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return acc != 0;
}

// The float32 values of src[off:off+n] for a block loop: the storage itself when it is float32
// (read in place: copying through a stack buffer and back tripled the memory traffic of a step,
// 64x3x32x32 on the 2-core EPYC), else `buf` filled by load_block.
DDPM_FAST_BLOCK_INLINE const float* block_in(const void* src, int dt, int64_t off, int64_t n, float* buf) {
  if (dt == DT_FLOAT32) return static_cast<const float*>(src) + off;
  load_block(src, dt, off, n, buf);
  return buf;
}

// Where a block loop writes the float32 results of dst[off:off+n]: dst itself when it is float32,
// else `buf`, which block_out_done then rounds into dst. buf may be block_in's buffer of the same
// block: the step loops read element i before they write it.
DDPM_FAST_BLOCK_INLINE float* block_out(void* dst, int dt, int64_t off, float* buf) {
  return dt == DT_FLOAT32 ? static_cast<float*>(dst) + off : buf;
}

DDPM_FAST_BLOCK_INLINE void block_out_done(void* dst, int dt, int64_t off, int64_t n, const float* buf) {
  if (dt != DT_FLOAT32) store_block(dst, dt, off, n, buf);
}

// The guided model output u + w (c - u) of model_block, into mb. Kept out of line, compiled for
// the baseline ISA as it always was: inlined into an AVX2+FMA block loop, GCC would contract the
// combine into an fma and change the guided values.
#if defined(__GNUC__)
__attribute__((noinline))
#endif
inline void guided_model_block(const void* m, int mdt, int64_t B, int64_t N, int64_t b, int64_t e0, int64_t n,
                               float w, const float* c, float* mb, uint8_t* bad) {
  alignas(64) float ub[kBlock];
  const float* u = block_in(m, mdt, (B + b) * N + e0, n, ub);
  if (bad != nullptr) *bad |= any_nonfinite(u, n);
  for (int64_t i = 0; i < n; ++i) mb[i] = guided_elem(c[i], u[i], w);
}

// The model output a step reads for elements [e0, e0 + n) of sample b: model_out's own (guided =
// false: in place when float32, else loaded into mb), or with classifier-free guidance u + w (c - u)
// from its rows b (conditional) and B + b (unconditional) of a [2B, N] model_out, combined into mb —
// each half read once, in the same pass as the step. `bad` (the NaN record's flag of this block, or
// nullptr): set when either half read here holds a NaN/inf, checked before the combine (and before
// the step writes anything, so an out that is model_out itself is checked as read).
DDPM_FAST_BLOCK_INLINE const float* model_block(const void* m, int mdt, int64_t B, int64_t N, int64_t b, int64_t e0,
                                                int64_t n, bool guided, float w, float* mb, uint8_t* bad = nullptr) {
  const float* c = block_in(m, mdt, b * N + e0, n, mb);
  if (bad != nullptr) *bad = any_nonfinite(c, n);
  if (!guided) return c;
  guided_model_block(m, mdt, B, N, b, e0, n, w, c, mb, bad);
  return mb;
}

// model_block into mb always (for loops that keep or overwrite the model block).
inline void load_model_block(const void* m, int mdt, int64_t B, int64_t N, int64_t b, int64_t e0, int64_t n,
                             bool guided, float w, float* mb, uint8_t* bad = nullptr) {
  const float* v = model_block(m, mdt, B, N, b, e0, n, guided, w, mb, bad);
  if (v != mb) std::memcpy(mb, v, static_cast<size_t>(n) * sizeof(float));
}

// The key of a checked seed (int64 [] / [1], or [2] = (key, sample offset)) and the offset its
// second value adds to every sample index (0 for a one-value seed).
struct PhiloxKey {
  uint32_t k0, k1;
  int64_t sample_offset;
};

inline PhiloxKey key_of(const at::Tensor& seed) {
  const at::Tensor s = seed.contiguous();  // CPU tensor: plain reads, no sync
  const int64_t* p = s.data_ptr<int64_t>();
  return PhiloxKey{seed_lo(p[0]), seed_hi(p[0]), s.numel() == 2 ? p[1] : 0};
}

// Counter word c1 of sample b: the global sample index sample_offset + seed[1] + b (checked to
// stay below 2**32: op_checks.h check_offset).
inline uint32_t sample_index(PhiloxKey key, int64_t sample_offset, int64_t b) {
  return static_cast<uint32_t>(sample_offset + key.sample_offset + b);
}

// Uniforms (bitwise the reference's) of elements e0 .. e0+n-1; e0 % 4 == 0; out holds n rounded up to 4.
inline void fill_uniform(PhiloxKey key, int64_t e0, int64_t n, uint32_t c1, uint32_t c2, uint32_t c3, float* out) {
  philox_uniforms(PhiloxRun{key.k0, key.k1, static_cast<uint64_t>(e0 / 4), (n + 3) / 4, c1, c2, c3}, out);
}

// Standard normals of elements e0 .. e0+n-1 (Box-Muller on word pairs, SIMD where the CPU has it:
// philox_simd.h); out holds n rounded up to 4.
inline void fill_normal(PhiloxKey key, int64_t e0, int64_t n, uint32_t c1, uint32_t c2, uint32_t c3, float* out) {
  philox_normals(PhiloxRun{key.k0, key.k1, static_cast<uint64_t>(e0 / 4), (n + 3) / 4, c1, c2, c3}, out);
}

// Calls f(b, e0, n) for every block [e0, e0 + n) of every sample b of a [B, N] problem, in parallel.
template <class F>
inline void for_each_block(int64_t B, int64_t N, const F& f) {
  if (B <= 0 || N <= 0) return;
  const int64_t nblk = (N + kBlock - 1) / kBlock;
  // grain: ~32K elements per task, so small tensors stay on one thread
  at::parallel_for(0, B * nblk, std::max<int64_t>(1, 32768 / kBlock), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / nblk;
      const int64_t e0 = (i % nblk) * kBlock;
      f(b, e0, std::min(kBlock, N - e0));
    }
  });
}

// exp(x) in float32 to ~1 ulp, written so that loops calling it vectorise (no libm call):
// x = k ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 polynomial (Cephes' expf coefficients),
// 2^k applied as two exact power-of-two factors so that results near overflow/underflow stay right.
inline float pow2i_f32(int32_t k) {  // 2^k for k in [-126, 127]
  const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float exp_f32(float x) {
  const float hi = 88.72283935546875f, lo = -103.972084045410f;
  const float xc = x > hi ? hi : (x < lo ? lo : x);
  const float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (xc - kf * 0.693359375f) - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t k = static_cast<int32_t>(kf);
  const int32_t k1 = k >> 1;
  float y = p * pow2i_f32(k1) * pow2i_f32(k - k1);
  y = x > hi ? __builtin_inff() : y;
  y = x < lo ? 0.0f : y;
  return y;  // NaN propagates through p
}

// SiLU as torch computes it: x / (1 + exp(-x)).
inline float silu_f32(float x) { return x / (1.0f + exp_f32(-x)); }

}  // namespace cpu
}  // namespace ddpm_fast

namespace ddpm_fast {
namespace cpu {

// A checked, contiguous timestep tensor (int32/int64, [] or [B]) read per sample.
struct Timesteps {
  at::Tensor t;
  const void* ptr;
  bool is_int64;
  int64_t stride;
  explicit Timesteps(at::Tensor tc)
      : t(std::move(tc)), ptr(t.data_ptr()), is_int64(t.scalar_type() == at::kLong),
        stride(t.numel() == 1 ? 0 : 1) {}
  int64_t operator()(int64_t b) const {
    return is_int64 ? static_cast<const int64_t*>(ptr)[b * stride]
                    : static_cast<const int32_t*>(ptr)[b * stride];
  }
};

// Fills z[0:n] with the step's noise: the given tensor's block, or Philox normals.
struct NoiseSource {
  const void* noise = nullptr;  // contiguous noise tensor data, or nullptr
  int noise_dt = DT_FLOAT32;
  PhiloxKey key{0, 0, 0};
  int64_t sample_offset = 0;
  uint32_t stream = STREAM_STEP;

  void fill(int64_t b, int64_t t, int64_t N, int64_t e0, int64_t n, float* z) const {
    if (noise != nullptr) {
      load_block(noise, noise_dt, b * N + e0, n, z);
    } else {
      fill_normal(key, e0, n, sample_index(key, sample_offset, b), static_cast<uint32_t>(t), stream, z);
    }
  }
  // The block's noise: the given tensor's own float32 data (block_in), else fill() into z.
  const float* block(int64_t b, int64_t t, int64_t N, int64_t e0, int64_t n, float* z) const {
    if (noise != nullptr) return block_in(noise, noise_dt, b * N + e0, n, z);
    fill(b, t, N, e0, n, z);
    return z;
  }
};

// The steps' NaN record (docs/ops_contract.md, reverse_step_out / ddim_step_out): one flag per
// block of for_each_block, set by the thread that loaded the block's model output, then reduced
// on the calling thread after the parallel loop: first_bad = max(first_bad, t[b] of every sample
// b with a flagged block). Each flag has one writer, so no atomics are needed.
class BadBlocks {
 public:
  BadBlocks(const c10::optional<at::Tensor>& first_bad, int64_t B, int64_t N)
      : first_bad_(first_bad), nblk_((N + kBlock - 1) / kBlock) {
    if (first_bad_.has_value()) flags_.assign(static_cast<size_t>(B * nblk_), 0);
  }
  // The flag of block [e0, e0 + kBlock) of sample b, or nullptr when nothing is recorded.
  uint8_t* flag(int64_t b, int64_t e0) {
    return flags_.empty() ? nullptr : flags_.data() + b * nblk_ + e0 / kBlock;
  }
  void reduce(const Timesteps& ts) {
    if (!first_bad_.has_value()) return;
    int64_t worst = -1;
    for (size_t i = 0; i < flags_.size(); ++i) {
      if (flags_[i]) worst = std::max(worst, ts(static_cast<int64_t>(i) / nblk_));
    }
    int64_t* p = first_bad_->data_ptr<int64_t>();
    *p = std::max(*p, worst);
  }

 private:
  c10::optional<at::Tensor> first_bad_;
  int64_t nblk_;
  std::vector<uint8_t> flags_;
};

// The noise source of a checked step (check_noise): the given noise, made contiguous in `holder`
// (which must outlive the source), else the seed's Philox stream, else none (a deterministic step).
inline NoiseSource noise_source(const c10::optional<at::Tensor>& noise, const c10::optional<at::Tensor>& seed,
                                int64_t sample_offset, at::Tensor& holder) {
  NoiseSource src;
  if (noise.has_value()) {
    holder = noise->contiguous();
    src.noise = holder.data_ptr();
    src.noise_dt = dtype_code(holder);
  } else if (seed.has_value()) {
    src.key = key_of(*seed);
    src.sample_offset = sample_offset;
  }
  return src;
}

}  // namespace cpu
}  // namespace ddpm_fast
