// CUDA kernel of multistep_update: one step of a multistep solver (DPM-Solver++, UniPC) in one
// pass. The step's coefficient row is read on the device (no host sync; a step outside the
// table gives NaN), x0 = a x + b m, x_next = c_x x + c_0 x0 + sum_k c_k history[k]. With
// classifier-free guidance model_out is [2N]: each thread reads its octet of both halves once.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

struct Row {
  float a, b, cx, c0, ch[MS_MAX_HISTORY];
};

__device__ __forceinline__ Row load_row(const double* table, int64_t S, const TimestepArg& step) {
  const int64_t s = timestep(step, 0);
  const bool ok = s >= 0 && s < S;
  const double* r = table + (ok ? s : 0) * MS_WIDTH;
  const float nan = __int_as_float(0x7fc00000);
  Row row;
  row.a = ok ? static_cast<float>(r[MS_X0_X]) : nan;
  row.b = ok ? static_cast<float>(r[MS_X0_M]) : nan;
  row.cx = ok ? static_cast<float>(r[MS_X]) : nan;
  row.c0 = ok ? static_cast<float>(r[MS_X0]) : nan;
#pragma unroll
  for (int k = 0; k < MS_MAX_HISTORY; ++k) row.ch[k] = ok ? static_cast<float>(r[MS_HISTORY + k]) : nan;
  return row;
}

// One thread per octet (8 consecutive elements: 16-byte accesses, common.cuh); K history
// buffers of N elements each.
template <int K>
__global__ void multistep_update_kernel(void* out, void* x0_out, const void* x, int xdt, const void* m, int mdt,
                                        const void* h, int hdt, const double* table, int64_t S, TimestepArg step,
                                        int64_t N, bool guided, float w, bool vec) {
  const Row c = load_row(table, S, step);
  const int64_t nq = (N + 7) / 8;
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < nq; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = 8 * q;
    const int n = static_cast<int>(N - i < 8 ? N - i : 8);
    float xv[8], mv[8], hv[8];
    ld8(x, xdt, i, n, vec, xv);
    ld8(m, mdt, i, n, vec, mv);
    if (guided) guide8(m, mdt, N + i, n, vec, w, mv);   // the multistep update records no NaN
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      mv[j] = c.a * xv[j] + c.b * mv[j];
      xv[j] = c.cx * xv[j] + c.c0 * mv[j];
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      ld8(h, hdt, k * N + i, n, vec, hv);
#pragma unroll
      for (int j = 0; j < 8; ++j) xv[j] += c.ch[k] * hv[j];
    }
    st8(out, xdt, i, n, vec, xv);
    st8(x0_out, xdt, i, n, vec, mv);
  }
}

}  // namespace

cudaError_t launch_multistep_update(void* out, void* x0, const void* x, int dtype, const void* model_out,
                                    int m_dtype, const void* history, int h_dtype, int64_t K, const double* table,
                                    int64_t steps, TimestepArg step, int64_t N, bool guided, float w,
                                    cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  // octets of every buffer 16-byte aligned (each history slot starts N elements on: N % 8 == 0)
  const bool vec = N % 8 == 0 && octet_aligned(out) && octet_aligned(x0) && octet_aligned(x) &&
                   octet_aligned(model_out) && (K == 0 || octet_aligned(history));
  const unsigned int grid = blocks_for((N + 7) / 8);
  switch (K) {
    case 0: multistep_update_kernel<0><<<grid, kThreads, 0, stream>>>(out, x0, x, dtype, model_out, m_dtype, history,
                                                                      h_dtype, table, steps, step, N, guided, w, vec); break;
    case 1: multistep_update_kernel<1><<<grid, kThreads, 0, stream>>>(out, x0, x, dtype, model_out, m_dtype, history,
                                                                      h_dtype, table, steps, step, N, guided, w, vec); break;
    case 2: multistep_update_kernel<2><<<grid, kThreads, 0, stream>>>(out, x0, x, dtype, model_out, m_dtype, history,
                                                                      h_dtype, table, steps, step, N, guided, w, vec); break;
    default: multistep_update_kernel<3><<<grid, kThreads, 0, stream>>>(out, x0, x, dtype, model_out, m_dtype,
                                                                       history, h_dtype, table, steps, step, N, guided, w, vec);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ddpm_fast
