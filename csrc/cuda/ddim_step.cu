// CUDA kernel of ddim_step: one thread per octet (8 consecutive elements of one sample, two Philox
// counters: common.cuh). With classifier-free guidance model_out is [2B, N]: each thread reads its
// octet of both halves once (guide8). `out` may alias x_t (each element is read by the thread that
// writes it, before writing). With first_bad (the NaN record) a thread whose octet of the model
// output holds a NaN/inf does one atomicMax of its t (record_bad).
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

template <int kPrediction>
__global__ void ddim_step_kernel(void* out, const void* x_t, int dt, const void* model_out, int mdt, NoiseArg noise,
                                 TimestepArg t, TimestepArg t_prev, TableArg table, float eta, bool clip,
                                 float clip_range, float final_alpha_bar, bool guided, float w, int64_t* first_bad,
                                 int64_t B, int64_t N, bool vec) {
  const bool add_noise = eta > 0.0f;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < octets(B, N);
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Octet u = octet(idx, N);
    const int64_t b = u.b, i = u.i;
    const int n = u.n;
    const int64_t tb = timestep(t, b);
    const DdimCoefs c = ddim_coefs(table.ptr, tb, timestep(t_prev, b), table.T, eta, final_alpha_bar);
    float z[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    if (add_noise && noise.noise == nullptr) octet_normals(noise.seed, u, noise.sample_offset + b, tb, STREAM_STEP, z);
    float x[8], m[8];
    ld8(x_t, dt, i, n, vec, x);
    ld_model8(model_out, mdt, i, n, vec, guided, w, B * N, first_bad, tb, m);
    if (add_noise && noise.noise != nullptr) ld8(noise.noise, noise.noise_dtype, i, n, vec, z);
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = ddim_step_elem<kPrediction>(c, x[j], m[j], z[j], clip, clip_range, add_noise);
    st8(out, dt, i, n, vec, x);
  }
}

}  // namespace

cudaError_t launch_ddim_step(void* out, const void* x_t, int dtype, const void* model_out, int m_dtype, NoiseArg noise,
                             TimestepArg t, TimestepArg t_prev, TableArg table, float eta, int prediction_type,
                             bool clip, float clip_range, float final_alpha_bar, bool guided, float guidance_scale,
                             int64_t* first_bad, int64_t B, int64_t N, cudaStream_t stream) {
  const int64_t work = octets(B, N);
  if (work == 0) return cudaSuccess;
  const unsigned int grid = blocks_for(work);
  const bool vec = step_octets_aligned(N, out, x_t, model_out, noise);
  if (prediction_type == PRED_EPSILON) {
    ddim_step_kernel<PRED_EPSILON><<<grid, kThreads, 0, stream>>>(out, x_t, dtype, model_out, m_dtype, noise, t,
                                                                  t_prev, table, eta, clip, clip_range,
                                                                  final_alpha_bar, guided, guidance_scale, first_bad, B,
                                                                  N, vec);
  } else if (prediction_type == PRED_SAMPLE) {
    ddim_step_kernel<PRED_SAMPLE><<<grid, kThreads, 0, stream>>>(out, x_t, dtype, model_out, m_dtype, noise, t, t_prev,
                                                                 table, eta, clip, clip_range, final_alpha_bar,
                                                                 guided, guidance_scale, first_bad, B, N, vec);
  } else {
    ddim_step_kernel<PRED_V><<<grid, kThreads, 0, stream>>>(out, x_t, dtype, model_out, m_dtype, noise, t, t_prev,
                                                            table, eta, clip, clip_range, final_alpha_bar,
                                                            guided, guidance_scale, first_bad, B, N, vec);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ddpm_fast
