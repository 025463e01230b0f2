// CUDA kernel of ddim_step: one thread per 4 consecutive elements of one sample (one Philox counter).
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

template <int kPrediction>
__global__ void ddim_step_kernel(void* out, const void* x_t, int dt, const void* model_out, int mdt, NoiseArg noise,
                                 TimestepArg t, TimestepArg t_prev, TableArg table, float eta, bool clip,
                                 float clip_range, float final_alpha_bar, int64_t B, int64_t N, bool vec) {
  const int64_t nq = (N + 3) / 4;
  const bool add_noise = eta > 0.0f;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < B * nq;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / nq, q = idx - b * nq;
    const int64_t tb = timestep(t, b);
    const DdimCoefs c = ddim_coefs(table.ptr, tb, timestep(t_prev, b), table.T, eta, final_alpha_bar);
    float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (add_noise && noise.noise == nullptr) philox_normals(noise.seed, q, noise.sample_offset + b, tb, STREAM_STEP, z);
    const int64_t i = b * N + 4 * q;
    const int n = static_cast<int>(N - 4 * q < 4 ? N - 4 * q : 4);
    float x[4], m[4];
    ld4(x_t, dt, i, n, vec, x);
    ld4(model_out, mdt, i, n, vec, m);
    if (add_noise && noise.noise != nullptr) ld4(noise.noise, noise.noise_dtype, i, n, vec, z);
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = ddim_step_elem<kPrediction>(c, x[j], m[j], z[j], clip, clip_range, add_noise);
    st4(out, dt, i, n, vec, x);
  }
}

}  // namespace

cudaError_t launch_ddim_step(void* out, const void* x_t, int dtype, const void* model_out, int m_dtype, NoiseArg noise,
                             TimestepArg t, TimestepArg t_prev, TableArg table, float eta, int prediction_type,
                             bool clip, float clip_range, float final_alpha_bar, int64_t B, int64_t N,
                             cudaStream_t stream) {
  const int64_t work = B * ((N + 3) / 4);
  if (work == 0) return cudaSuccess;
  const unsigned int grid = blocks_for(work);
  const bool vec = step_quads_aligned(N, out, x_t, dtype, model_out, m_dtype, noise);
  if (prediction_type == PRED_EPSILON) {
    ddim_step_kernel<PRED_EPSILON><<<grid, kThreads, 0, stream>>>(out, x_t, dtype, model_out, m_dtype, noise, t,
                                                                  t_prev, table, eta, clip, clip_range,
                                                                  final_alpha_bar, B, N, vec);
  } else if (prediction_type == PRED_SAMPLE) {
    ddim_step_kernel<PRED_SAMPLE><<<grid, kThreads, 0, stream>>>(out, x_t, dtype, model_out, m_dtype, noise, t, t_prev,
                                                                 table, eta, clip, clip_range, final_alpha_bar, B, N, vec);
  } else {
    ddim_step_kernel<PRED_V><<<grid, kThreads, 0, stream>>>(out, x_t, dtype, model_out, m_dtype, noise, t, t_prev,
                                                            table, eta, clip, clip_range, final_alpha_bar, B, N, vec);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ddpm_fast
