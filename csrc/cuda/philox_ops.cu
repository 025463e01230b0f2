// CUDA kernels of philox_normal / philox_uniform (and the raw generator for known-answer tests):
// one thread per counter, i.e. per 4 consecutive elements of one sample.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

__global__ void philox_kernel(float* out, bool normal, const int64_t* seed, TimestepArg t, int64_t batch,
                              int64_t numel, int64_t sample_offset, uint32_t stream_id) {
  const int64_t nq = (numel + 3) / 4;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < batch * nq;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / nq, q = idx - b * nq;
    const int64_t s = *seed;
    const Philox4 p = philox4x32_10(static_cast<uint32_t>(q), static_cast<uint32_t>(sample_offset + b),
                                    static_cast<uint32_t>(timestep(t, b)), stream_id, seed_lo(s), seed_hi(s));
    float v[4];
    if (normal) {
      normals4(p, v);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = uniform_from_word(p.w[j]);
    }
    float* dst = out + b * numel + 4 * q;
    if (numel % 4 == 0) {
      // one 16-byte store: out is a fresh allocation (256-byte aligned) and every row starts on
      // a multiple of 4 floats
      *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (4 * q + j < numel) dst[j] = v[j];
      }
    }
  }
}

__global__ void philox_words_kernel(const int64_t* counters, const int64_t* key, int64_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t* c = counters + 4 * i;
    const Philox4 p = philox4x32_10(static_cast<uint32_t>(c[0]), static_cast<uint32_t>(c[1]),
                                    static_cast<uint32_t>(c[2]), static_cast<uint32_t>(c[3]),
                                    static_cast<uint32_t>(key[0]), static_cast<uint32_t>(key[1]));
#pragma unroll
    for (int j = 0; j < 4; ++j) out[4 * i + j] = p.w[j];
  }
}

}  // namespace

cudaError_t launch_philox(float* out, bool normal, const int64_t* seed, TimestepArg t, int64_t batch, int64_t numel,
                          int64_t sample_offset, int64_t stream_id, cudaStream_t stream) {
  const int64_t work = batch * ((numel + 3) / 4);
  if (work == 0) return cudaSuccess;
  philox_kernel<<<blocks_for(work), kThreads, 0, stream>>>(out, normal, seed, t, batch, numel, sample_offset,
                                                           static_cast<uint32_t>(stream_id));
  return cudaGetLastError();
}

cudaError_t launch_philox_words(const int64_t* counters, const int64_t* key, int64_t* out, int64_t n,
                                cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  philox_words_kernel<<<blocks_for(n), kThreads, 0, stream>>>(counters, key, out, n);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ddpm_fast
