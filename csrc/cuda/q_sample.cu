// CUDA kernels of q_sample and q_sample_seeded: one thread per 4 consecutive elements of one
// sample (one Philox counter), coefficients read from the device table at the device timestep.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

__global__ void q_sample_kernel(void* out, const void* x0, int dt, const void* noise, int ndt, TimestepArg t,
                                TableArg table, int64_t B, int64_t N, bool vec) {
  const int64_t nq = (N + 3) / 4;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < B * nq;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / nq, q = idx - b * nq;
    const QCoefs c = q_coefs(table.ptr, timestep(t, b), table.T);
    const int64_t i = b * N + 4 * q;
    const int n = static_cast<int>(N - 4 * q < 4 ? N - 4 * q : 4);
    float x[4], z[4];
    ld4(x0, dt, i, n, vec, x);
    ld4(noise, ndt, i, n, vec, z);
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = q_sample_elem(c, x[j], z[j]);
    st4(out, dt, i, n, vec, x);
  }
}

__global__ void q_sample_seeded_kernel(void* x_t, void* target, const void* x0, int dt, TimestepArg t, TableArg table,
                                       const int64_t* seed, int64_t sample_offset, int target_type, int64_t B,
                                       int64_t N, bool vec) {
  const int64_t nq = (N + 3) / 4;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < B * nq;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / nq, q = idx - b * nq;
    const int64_t tb = timestep(t, b);
    const QCoefs c = q_coefs(table.ptr, tb, table.T);
    float z[4];
    philox_normals(seed, q, sample_offset + b, tb, STREAM_Q_SAMPLE, z);
    const int64_t i = b * N + 4 * q;
    const int n = static_cast<int>(N - 4 * q < 4 ? N - 4 * q : 4);
    float x[4], xt[4], tg[4];
    ld4(x0, dt, i, n, vec, x);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      xt[j] = q_sample_elem(c, x[j], z[j]);
      tg[j] = q_target_elem(c, x[j], z[j], target_type);
    }
    st4(x_t, dt, i, n, vec, xt);
    st4(target, dt, i, n, vec, tg);
  }
}

}  // namespace

cudaError_t launch_q_sample(void* out, const void* x0, int dtype, const void* noise, int noise_dtype, TimestepArg t,
                            TableArg table, int64_t B, int64_t N, cudaStream_t stream) {
  const int64_t work = B * ((N + 3) / 4);
  if (work == 0) return cudaSuccess;
  const bool vec = N % 4 == 0 && quad_aligned(out, dtype) && quad_aligned(x0, dtype) && quad_aligned(noise, noise_dtype);
  q_sample_kernel<<<blocks_for(work), kThreads, 0, stream>>>(out, x0, dtype, noise, noise_dtype, t, table, B, N, vec);
  return cudaGetLastError();
}

cudaError_t launch_q_sample_seeded(void* x_t, void* target, const void* x0, int dtype, TimestepArg t, TableArg table,
                                   const int64_t* seed, int64_t sample_offset, int target_type, int64_t B, int64_t N,
                                   cudaStream_t stream) {
  const int64_t work = B * ((N + 3) / 4);
  if (work == 0) return cudaSuccess;
  const bool vec = N % 4 == 0 && quad_aligned(x_t, dtype) && quad_aligned(target, dtype) && quad_aligned(x0, dtype);
  q_sample_seeded_kernel<<<blocks_for(work), kThreads, 0, stream>>>(x_t, target, x0, dtype, t, table, seed,
                                                                   sample_offset, target_type, B, N, vec);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ddpm_fast
