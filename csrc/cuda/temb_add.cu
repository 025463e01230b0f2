// CUDA kernel of temb_add: out[b, c, :] = h[b, c, :] + temb[b, c].
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

// One thread per 8 consecutive elements of one (b, c) row (16-byte accesses at 16 bit, two at fp32).
__global__ void temb_add_kernel(void* out, const void* h, int dt, const void* temb, int tdt, int64_t BC, int64_t HW,
                                bool vec) {
  const int64_t no = (HW + 7) / 8;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < BC * no;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / no, o = idx - row * no;
    const int64_t i = row * HW + 8 * o;
    const int n = static_cast<int>(HW - 8 * o < 8 ? HW - 8 * o : 8);
    const float add = ld(temb, tdt, row);
    float v[8];
    ld8(h, dt, i, n, vec, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] += add;
    st8(out, dt, i, n, vec, v);
  }
}

}  // namespace

cudaError_t launch_temb_add(void* out, const void* h, int dtype, const void* temb, int temb_dtype, int64_t B, int64_t C,
                            int64_t HW, cudaStream_t stream) {
  const int64_t work = B * C * ((HW + 7) / 8);
  if (work == 0) return cudaSuccess;
  const bool vec = HW % 8 == 0 && octet_aligned(out) && octet_aligned(h);
  temb_add_kernel<<<blocks_for(work), kThreads, 0, stream>>>(out, h, dtype, temb, temb_dtype, B * C, HW, vec);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ddpm_fast
