// CUDA kernel of temb_add: out[b, c, :] = h[b, c, :] + temb[b, c].
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

// One thread per 4 consecutive elements of one (b, c) row.
__global__ void temb_add_kernel(void* out, const void* h, int dt, const void* temb, int tdt, int64_t BC, int64_t HW,
                                bool vec) {
  const int64_t nq = (HW + 3) / 4;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < BC * nq;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / nq, q = idx - row * nq;
    const int64_t i = row * HW + 4 * q;
    const int n = static_cast<int>(HW - 4 * q < 4 ? HW - 4 * q : 4);
    const float add = ld(temb, tdt, row);
    float v[4];
    ld4(h, dt, i, n, vec, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] += add;
    st4(out, dt, i, n, vec, v);
  }
}

}  // namespace

cudaError_t launch_temb_add(void* out, const void* h, int dtype, const void* temb, int temb_dtype, int64_t B, int64_t C,
                            int64_t HW, cudaStream_t stream) {
  const int64_t work = B * C * ((HW + 3) / 4);
  if (work == 0) return cudaSuccess;
  const bool vec = HW % 4 == 0 && quad_aligned(out, dtype) && quad_aligned(h, dtype);
  temb_add_kernel<<<blocks_for(work), kThreads, 0, stream>>>(out, h, dtype, temb, temb_dtype, B * C, HW, vec);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ddpm_fast
