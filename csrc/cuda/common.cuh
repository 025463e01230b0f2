// Device helpers shared by the CUDA kernels: loads/stores by storage dtype code (arithmetic in
// float32), launch geometry, error return. Plain CUDA, no torch headers.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ddpm_fast/cuda_launchers.h"
#include "ddpm_fast/enums.h"
#include "ddpm_fast/philox.h"
#include "ddpm_fast/step_math.h"

namespace ddpm_fast {
namespace cuda {

constexpr int kThreads = 256;

__device__ __forceinline__ float ld(const void* p, int dt, int64_t i) {
  if (dt == DT_FLOAT32) return static_cast<const float*>(p)[i];
  if (dt == DT_FLOAT16) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

__device__ __forceinline__ void st(void* p, int dt, int64_t i, float v) {
  if (dt == DT_FLOAT32) {
    static_cast<float*>(p)[i] = v;
  } else if (dt == DT_FLOAT16) {
    static_cast<__half*>(p)[i] = __float2half_rn(v);
  } else {
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  }
}

// 8 consecutive elements [i, i + 8) as float32, i 8-element aligned and the pointer 16-byte
// aligned: two 16-byte accesses at fp32, one at fp16/bf16 (8 x 16 bit).
__device__ __forceinline__ void ld8(const void* p, int dt, int64_t i, float v[8]) {
  if (dt == DT_FLOAT32) {
    const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
    const float4 a = q[0], b = q[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const char*>(p) + 2 * i);
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float2 f;
      if (dt == DT_FLOAT16) {
        f = __half22float2(*reinterpret_cast<const __half2*>(&w[j]));
      } else {
        f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[j]));
      }
      v[2 * j] = f.x;
      v[2 * j + 1] = f.y;
    }
  }
}

__device__ __forceinline__ void st8(void* p, int dt, int64_t i, const float v[8]) {
  if (dt == DT_FLOAT32) {
    float4* q = reinterpret_cast<float4*>(static_cast<float*>(p) + i);
    q[0] = make_float4(v[0], v[1], v[2], v[3]);
    q[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint32_t w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (dt == DT_FLOAT16) {
        const __half2 h = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
        w[j] = *reinterpret_cast<const uint32_t*>(&h);
      } else {
        const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
        w[j] = *reinterpret_cast<const uint32_t*>(&h);
      }
    }
    *reinterpret_cast<uint4*>(static_cast<char*>(p) + 2 * i) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// 8 consecutive elements [i, i + n) (n <= 8) as float32. With `vec` (the caller checked that
// every octet starts 8-element aligned on a 16-byte aligned pointer) a full octet is two 16-byte
// accesses at fp32 and one at fp16/bf16.
__device__ __forceinline__ void ld8(const void* p, int dt, int64_t i, int n, bool vec, float v[8]) {
  if (vec && n == 8) {
    ld8(p, dt, i, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = j < n ? ld(p, dt, i + j) : 0.0f;
}

// True when one of v[0:8] is NaN or inf (its exponent field all ones; a bit test, which no
// fast-math flag rewrites). Elements past an octet's n are loaded as 0: finite.
__device__ __forceinline__ bool any_nonfinite8(const float v[8]) {
  unsigned int top = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) top = max(top, __float_as_uint(v[j]) & 0x7f800000u);
  return top == 0x7f800000u;
}

// Classifier-free guidance: m holds the conditional octet; read the unconditional one at element
// i (in the second half of a [2B, N] model_out) and combine in place: m = u + w (m - u).
// Returns whether the unconditional octet holds a NaN/inf (the NaN record checks both halves as
// read). A returned flag, not a flag pointer: taking a local's address gave the step kernels an
// 8-byte stack frame (gpu-check).
__device__ __forceinline__ bool guide8(const void* p, int dt, int64_t i, int n, bool vec, float w, float m[8]) {
  float u[8];
  ld8(p, dt, i, n, vec, u);
  const bool bad = any_nonfinite8(u);
#pragma unroll
  for (int j = 0; j < 8; ++j) m[j] = guided_elem(m[j], u[j], w);
  return bad;
}

// The steps' NaN record: first_bad = max(first_bad, t) from a thread whose octet saw a NaN/inf
// (only such threads issue the atomic; first_bad is nullptr when nothing is recorded).
__device__ __forceinline__ void record_bad(int64_t* first_bad, bool bad, int64_t t) {
  if (first_bad != nullptr && bad) {
    atomicMax(reinterpret_cast<long long*>(first_bad), static_cast<long long>(t));
  }
}

// The model output octet of a step at element i (m): model_out's own, or with classifier-free
// guidance (guided) combined with its unconditional octet at half + i (half = B * N, guide8); and
// the NaN record of both halves as read (record_bad at the step's timestep t).
__device__ __forceinline__ void ld_model8(const void* model_out, int mdt, int64_t i, int n, bool vec, bool guided,
                                          float w, int64_t half, int64_t* first_bad, int64_t t, float m[8]) {
  ld8(model_out, mdt, i, n, vec, m);
  bool bad = first_bad != nullptr && any_nonfinite8(m);
  if (guided) {
    const bool bad_u = guide8(model_out, mdt, half + i, n, vec, w, m);
    bad = bad || (first_bad != nullptr && bad_u);
  }
  record_bad(first_bad, bad, t);
}

__device__ __forceinline__ void st8(void* p, int dt, int64_t i, int n, bool vec, const float v[8]) {
  if (vec && n == 8) {
    st8(p, dt, i, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (j < n) st(p, dt, i + j, v[j]);
  }
}

// True when every 8-element aligned octet of p (any dtype) is 16-byte aligned.
inline bool octet_aligned(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether a step kernel (reverse_step, ddim_step) over samples of N elements may use vector
// accesses: octets never straddle samples and every octet of out, x_t, model_out and the given
// noise is 16-byte aligned.
inline bool step_octets_aligned(int64_t N, const void* out, const void* x_t, const void* model_out,
                                const NoiseArg& noise) {
  return N % 8 == 0 && octet_aligned(out) && octet_aligned(x_t) && octet_aligned(model_out) &&
         octet_aligned(noise.noise);
}

__device__ __forceinline__ int64_t timestep(const TimestepArg& t, int64_t b) {
  return load_timestep(t.ptr, t.is_int64, t.stride, b);
}

// Grid for `work` items handled by grid-stride loops of kThreads-thread blocks.
inline unsigned int blocks_for(int64_t work) {
  int64_t blocks = (work + kThreads - 1) / kThreads;
  const int64_t cap = int64_t(1) << 20;  // grid-stride beyond ~268M items
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// Elements [8 o, 8 o + 8) of a sample are one octet: the unit of work of the element-wise kernels
// (one 16-byte access at 16 bit, two at fp32; the normals of Philox counters 2 o and 2 o + 1).
__host__ __device__ __forceinline__ int64_t octets(int64_t B, int64_t N) { return B * ((N + 7) / 8); }

// Octet idx (sample-major) of B samples of N elements: sample b, octet o, first element i, n <= 8
// elements.
struct Octet {
  int64_t b, o, i;
  int n;
};

__device__ __forceinline__ Octet octet(int64_t idx, int64_t N) {
  const int64_t per = (N + 7) / 8, b = idx / per, o = idx - b * per;
  return Octet{b, o, b * N + 8 * o, static_cast<int>(N - 8 * o < 8 ? N - 8 * o : 8)};
}

// The sample index n = sample_offset + b plus the seed's device offset (seed[1] of a seed [2]),
// as the 32-bit counter word c1 (modulo 2**32: the range is the caller's contract on a GPU).
__device__ __forceinline__ uint32_t sample_word(SeedArg seed, int64_t n) {
  return static_cast<uint32_t>(seed.has_offset ? n + seed.ptr[1] : n);
}

// The 4 standard normals of counter (q, n [+ seed offset], t, stream) under the device seed.
__device__ __forceinline__ void philox_normals(SeedArg seed, int64_t q, int64_t n, int64_t t, uint32_t stream,
                                               float z[4]) {
  const int64_t s = seed.ptr[0];
  const Philox4 p = philox4x32_10(static_cast<uint32_t>(q), sample_word(seed, n), static_cast<uint32_t>(t),
                                  stream, seed_lo(s), seed_hi(s));
  normals4(p, z);
}

// The normals of octet u's elements (counters 2 o and, when it has more than 4 elements, 2 o + 1).
__device__ __forceinline__ void octet_normals(SeedArg seed, const Octet& u, int64_t n, int64_t t,
                                              uint32_t stream, float z[8]) {
  philox_normals(seed, 2 * u.o, n, t, stream, z);
  if (u.n > 4) philox_normals(seed, 2 * u.o + 1, n, t, stream, z + 4);
}

}  // namespace cuda
}  // namespace ddpm_fast
