// CUDA kernels of philox_normal / philox_uniform (and the raw generator for known-answer tests).
// philox_kernel: one thread per counter, i.e. per 4 consecutive elements of one sample; a block's
// kThreads consecutive counters (in sample-major order) cover one contiguous range of `out`, which
// the block stages in shared memory and stores with 16-byte accesses wherever `out` is 16-byte
// aligned, so the stores are vector and coalesced whatever numel % 4 is.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

// The four values of counter (q, n, t, stream): normals or uniforms.
__device__ __forceinline__ void counter_values(bool normal, int64_t s, int64_t q, int64_t n, int64_t t,
                                               uint32_t stream_id, float v[4]) {
  const Philox4 p = philox4x32_10(static_cast<uint32_t>(q), static_cast<uint32_t>(n), static_cast<uint32_t>(t),
                                  stream_id, seed_lo(s), seed_hi(s));
  if (normal) {
    normals4(p, v);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = uniform_from_word(p.w[j]);
  }
}

// Index in `out` of element 4 q of sample b: counter idx = b * nq + q.
__device__ __forceinline__ int64_t counter_start(int64_t idx, int64_t nq, int64_t numel) {
  const int64_t b = idx / nq;
  return b * numel + 4 * (idx - b * nq);
}

__global__ void __launch_bounds__(kThreads) philox_kernel(float* out, bool normal, SeedArg seed, TimestepArg t,
                                                          int64_t batch, int64_t numel, int64_t sample_offset,
                                                          uint32_t stream_id) {
  // element lo + i of a block's range is tile[(shift + i) / 4][(shift + i) % 4]: slot k then maps to
  // one 16-byte-aligned quad of out (shift = the range start's offset from a 16-byte boundary)
  __shared__ float4 tile[kThreads + 1];
  float* buf = reinterpret_cast<float*>(tile);
  const int64_t nq = (numel + 3) / 4, total = batch * nq;
  const int64_t s = seed.ptr[0];
  const int64_t base = seed.has_offset ? sample_offset + seed.ptr[1] : sample_offset;  // c1 of sample 0
  const int misalign = static_cast<int>((reinterpret_cast<uintptr_t>(out) / sizeof(float)) & 3);
  for (int64_t first = blockIdx.x * int64_t(kThreads); first < total; first += int64_t(gridDim.x) * kThreads) {
    const int64_t last = (first + kThreads < total ? first + kThreads : total) - 1;
    const int64_t lo = counter_start(first, nq, numel);
    const int64_t last_start = counter_start(last, nq, numel);
    const int64_t row_end = (last_start / numel + 1) * numel;
    const int64_t hi = last_start + 4 < row_end ? last_start + 4 : row_end;  // end of the range
    const int shift = static_cast<int>((lo + misalign) & 3);
    const int64_t idx = first + threadIdx.x;
    if (idx <= last) {
      const int64_t b = idx / nq, q = idx - b * nq;
      float v[4];
      counter_values(normal, s, q, base + b, timestep(t, b), stream_id, v);
      const int n = static_cast<int>(numel - 4 * q < 4 ? numel - 4 * q : 4);
      const int64_t at = shift + (b * numel + 4 * q - lo);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (j < n) buf[at + j] = v[j];
      }
    }
    __syncthreads();
    const int64_t slots = (shift + (hi - lo) + 3) / 4;
    for (int64_t k = threadIdx.x; k < slots; k += kThreads) {
      const int64_t e0 = lo - shift + 4 * k;  // out index of slot k's first float
      if (e0 >= lo && e0 + 4 <= hi) {
        *reinterpret_cast<float4*>(out + e0) = tile[k];
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (e0 + j >= lo && e0 + j < hi) out[e0 + j] = buf[4 * k + j];
        }
      }
    }
    __syncthreads();  // tile is refilled by the next iteration
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

cudaError_t launch_philox(float* out, bool normal, SeedArg seed, TimestepArg t, int64_t batch, int64_t numel,
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
