// Launchers of the CUDA kernels (csrc/cuda/*.cu): raw pointers, sizes and a stream, no torch.
// Data tensors are contiguous [B, N] (N = product of the non-batch dims) with storage dtype
// codes from enums.h (DT_*); arithmetic is float32. The torch-facing side is csrc/cuda/bindings.cpp.
// Timestep, seed and schedule table are device pointers: nothing is read on the host.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace ddpm_fast {
namespace cuda {

// A timestep tensor: int32 or int64, [] (stride 0) or [B] (stride 1).
struct TimestepArg {
  const void* ptr;
  bool is_int64;
  int64_t stride;
};

// The schedule table, float64 [T, 16] row-major.
struct TableArg {
  const double* ptr;
  int64_t T;
};

// A device seed: ptr[0] the int64 key; with has_offset, ptr[1] a sample offset that the kernels
// add to every sample index (the seed tensor int64 [2] = (key, offset)), read on the device so a
// captured graph replays any offset. c1 = (sample_offset + ptr[1] + b) mod 2**32.
struct SeedArg {
  const int64_t* ptr;
  bool has_offset;
};

// Counter-based noise: c1 = sample_offset (+ the seed's device offset) + b.
struct NoiseArg {
  const void* noise;   // given noise [B, N], or nullptr to draw from Philox
  int noise_dtype;
  SeedArg seed;
  int64_t sample_offset;
};

cudaError_t launch_philox(float* out, bool normal, SeedArg seed, TimestepArg t, int64_t batch,
                          int64_t numel, int64_t sample_offset, int64_t stream_id, cudaStream_t stream);

// The raw generator (known-answer tests): counters int64 [n, 4], key int64 [2] -> words int64 [n, 4].
cudaError_t launch_philox_words(const int64_t* counters, const int64_t* key, int64_t* out, int64_t n,
                                cudaStream_t stream);

cudaError_t launch_q_sample(void* out, const void* x0, int dtype, const void* noise, int noise_dtype,
                            TimestepArg t, TableArg table, int64_t B, int64_t N, cudaStream_t stream);

cudaError_t launch_q_sample_seeded(void* x_t, void* target, const void* x0, int dtype, TimestepArg t,
                                   TableArg table, SeedArg seed, int64_t sample_offset,
                                   int target_type, int64_t B, int64_t N, cudaStream_t stream);

// The steps. `out` may be x_t. first_bad: nullptr, or a device int64 that becomes
// max(*first_bad, t[b] of every sample b whose model output (either half with guidance) holds a
// NaN/inf) — the sampler's NaN record, in the same pass.
cudaError_t launch_reverse_step(void* out, const void* x_t, int dtype, const void* model_out, int m_dtype,
                                NoiseArg noise, TimestepArg t, TableArg table, int prediction_type,
                                int variance_type, bool clip, float clip_range, bool guided, float guidance_scale,
                                int64_t* first_bad, int64_t B, int64_t N, cudaStream_t stream);

cudaError_t launch_ddim_step(void* out, const void* x_t, int dtype, const void* model_out, int m_dtype,
                             NoiseArg noise, TimestepArg t, TimestepArg t_prev, TableArg table, float eta,
                             int prediction_type, bool clip, float clip_range, float final_alpha_bar,
                             bool guided, float guidance_scale, int64_t* first_bad, int64_t B, int64_t N,
                             cudaStream_t stream);

// h [B, C, HW] + temb [B, C] broadcast over HW.
cudaError_t launch_temb_add(void* out, const void* h, int dtype, const void* temb, int temb_dtype, int64_t B,
                            int64_t C, int64_t HW, cudaStream_t stream);

// x, model_out, out, x0 [N]; history [K, N] (K <= 3; unused when 0); table float64 [steps, 8];
// step a device int32/int64 scalar (the table row). guided: model_out is [2N], conditional half
// first, and the update reads u + w (c - u).
cudaError_t launch_multistep_update(void* out, void* x0, const void* x, int dtype, const void* model_out,
                                    int m_dtype, const void* history, int h_dtype, int64_t K, const double* table,
                                    int64_t steps, TimestepArg step, int64_t N, bool guided, float w,
                                    cudaStream_t stream);

// x [B, C, HW]; weight, bias [C]; temb [B, C] or nullptr; workspace: a float32 scratch buffer of
// groupnorm_temb_silu_workspace_floats(B, C, HW, num_groups) elements (per-block partial
// statistics and per-row coefficients), used on `stream` only.
int64_t groupnorm_temb_silu_workspace_floats(int64_t B, int64_t C, int64_t HW, int64_t num_groups);
cudaError_t launch_groupnorm_temb_silu(void* out, const void* x, int dtype, const void* weight, int w_dtype,
                                       const void* bias, int b_dtype, const void* temb, int temb_dtype,
                                       int64_t B, int64_t C, int64_t HW, int64_t num_groups, float eps,
                                       int temb_mode, bool apply_silu, float* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace ddpm_fast
