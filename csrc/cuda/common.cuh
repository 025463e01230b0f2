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

// 4 consecutive elements [i, i + n) (n <= 4) as float32. With `vec` (the caller checked that every
// quad starts 4-element aligned) a full quad is one 16-byte (fp32) or 8-byte (fp16/bf16) access.
__device__ __forceinline__ void ld4(const void* p, int dt, int64_t i, int n, bool vec, float v[4]) {
  if (vec && n == 4) {
    if (dt == DT_FLOAT32) {
      const float4 f = *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
      v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
    } else if (dt == DT_FLOAT16) {
      const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const __half*>(p) + i);
      const __half2* h = reinterpret_cast<const __half2*>(&raw);
      const float2 a = __half22float2(h[0]), b = __half22float2(h[1]);
      v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
    } else {
      const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(p) + i);
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
      const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
      v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = j < n ? ld(p, dt, i + j) : 0.0f;
}

__device__ __forceinline__ void st4(void* p, int dt, int64_t i, int n, bool vec, const float v[4]) {
  if (vec && n == 4) {
    if (dt == DT_FLOAT32) {
      *reinterpret_cast<float4*>(static_cast<float*>(p) + i) = make_float4(v[0], v[1], v[2], v[3]);
    } else if (dt == DT_FLOAT16) {
      uint2 raw;
      __half2* h = reinterpret_cast<__half2*>(&raw);
      h[0] = __floats2half2_rn(v[0], v[1]);
      h[1] = __floats2half2_rn(v[2], v[3]);
      *reinterpret_cast<uint2*>(static_cast<__half*>(p) + i) = raw;
    } else {
      uint2 raw;
      __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
      h[0] = __floats2bfloat162_rn(v[0], v[1]);
      h[1] = __floats2bfloat162_rn(v[2], v[3]);
      *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(p) + i) = raw;
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (j < n) st(p, dt, i + j, v[j]);
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

// True when a quad of dtype dt at any 4-aligned index of p is one aligned vector access.
inline bool quad_aligned(const void* p, int dt) {
  const uintptr_t bytes = dt == DT_FLOAT32 ? 16 : 8;
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Whether a step kernel (reverse_step, ddim_step) over samples of N elements may use vector
// accesses: quads never straddle samples and every quad of out, x_t, model_out and the given
// noise is one aligned access.
inline bool step_quads_aligned(int64_t N, const void* out, const void* x_t, int dtype, const void* model_out,
                               int m_dtype, const NoiseArg& noise) {
  return N % 4 == 0 && quad_aligned(out, dtype) && quad_aligned(x_t, dtype) && quad_aligned(model_out, m_dtype) &&
         quad_aligned(noise.noise, noise.noise_dtype);
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

// The 4 standard normals of counter (q, sample_offset + b, t, stream) under the device seed.
__device__ __forceinline__ void philox_normals(const int64_t* seed, int64_t q, int64_t n, int64_t t, uint32_t stream,
                                               float z[4]) {
  const int64_t s = *seed;
  const Philox4 p = philox4x32_10(static_cast<uint32_t>(q), static_cast<uint32_t>(n), static_cast<uint32_t>(t),
                                  stream, seed_lo(s), seed_hi(s));
  normals4(p, z);
}

}  // namespace cuda
}  // namespace ddpm_fast
