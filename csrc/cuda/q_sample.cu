// CUDA kernels of q_sample and q_sample_seeded: one thread per 8 consecutive elements of one
// sample (two Philox counters; 16-byte accesses at 16 bit, two at fp32), coefficients read from
// the device table at the device timestep.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

__global__ void q_sample_kernel(void* out, const void* x0, int dt, const void* noise, int ndt, TimestepArg t,
                                TableArg table, int64_t B, int64_t N, bool vec) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < octets(B, N);
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Octet u = octet(idx, N);
    const int64_t i = u.i;
    const int n = u.n;
    const QCoefs c = q_coefs(table.ptr, timestep(t, u.b), table.T);
    float x[8], z[8];
    ld8(x0, dt, i, n, vec, x);
    ld8(noise, ndt, i, n, vec, z);
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = q_sample_elem(c, x[j], z[j]);
    st8(out, dt, i, n, vec, x);
  }
}

__global__ void q_sample_seeded_kernel(void* x_t, void* target, const void* x0, int dt, TimestepArg t, TableArg table,
                                       SeedArg seed, int64_t sample_offset, int target_type, int64_t B,
                                       int64_t N, bool vec) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < octets(B, N);
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Octet u = octet(idx, N);
    const int64_t i = u.i;
    const int n = u.n;
    const int64_t tb = timestep(t, u.b);
    const QCoefs c = q_coefs(table.ptr, tb, table.T);
    float z[8];
    octet_normals(seed, u, sample_offset + u.b, tb, STREAM_Q_SAMPLE, z);
    float x[8], xt[8], tg[8];
    ld8(x0, dt, i, n, vec, x);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      xt[j] = q_sample_elem(c, x[j], z[j]);
      tg[j] = q_target_elem(c, x[j], z[j], target_type);
    }
    st8(x_t, dt, i, n, vec, xt);
    st8(target, dt, i, n, vec, tg);
  }
}

}  // namespace

cudaError_t launch_q_sample(void* out, const void* x0, int dtype, const void* noise, int noise_dtype, TimestepArg t,
                            TableArg table, int64_t B, int64_t N, cudaStream_t stream) {
  const int64_t work = octets(B, N);
  if (work == 0) return cudaSuccess;
  const bool vec = N % 8 == 0 && octet_aligned(out) && octet_aligned(x0) && octet_aligned(noise);
  q_sample_kernel<<<blocks_for(work), kThreads, 0, stream>>>(out, x0, dtype, noise, noise_dtype, t, table, B, N, vec);
  return cudaGetLastError();
}

cudaError_t launch_q_sample_seeded(void* x_t, void* target, const void* x0, int dtype, TimestepArg t, TableArg table,
                                   SeedArg seed, int64_t sample_offset, int target_type, int64_t B, int64_t N,
                                   cudaStream_t stream) {
  const int64_t work = octets(B, N);
  if (work == 0) return cudaSuccess;
  const bool vec = N % 8 == 0 && octet_aligned(x_t) && octet_aligned(target) && octet_aligned(x0);
  q_sample_seeded_kernel<<<blocks_for(work), kThreads, 0, stream>>>(x_t, target, x0, dtype, t, table, seed,
                                                                   sample_offset, target_type, B, N, vec);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ddpm_fast
