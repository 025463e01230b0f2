// CUDA kernels of groupnorm_temb_silu: silu(GroupNorm(x [+ temb]) [+ temb]) in three launches
// that read x twice and write it once, whatever the number of groups:
//   1. groupnorm_stats_kernel: a group (contiguous, count = C/G * HW elements) is split across
//      `splits` blocks (ddpm_fast/groupnorm_plan.h: enough blocks to fill the GPU even when B * G
//      is small); each block merges its elements' float32 mean / M2 (Chan et al.: per 8-element
//      vector, then across threads and warps; no E[x^2] - E[x]^2 cancellation) into one partial;
//   2. groupnorm_finalize_kernel: one thread per (sample, channel) merges its group's partials
//      and folds mean, rstd, weight, bias and temb into y = (x - shift) * scale + add;
//   3. groupnorm_apply_kernel: element-wise over all of x, 8 elements per thread (16-byte
//      accesses).
// Channels are tracked incrementally along each thread's grid-stride walk (RowWalk: integer
// divisions once per thread, none per element). The vector path needs HW % 8 == 0 and 16-byte
// aligned x / out; otherwise the same kernels run one element at a time (W = 1).
#include "common.cuh"
#include "ddpm_fast/groupnorm_plan.h"

namespace ddpm_fast {
namespace cuda {
namespace {

constexpr int kVec = kGroupNormVec;
static_assert(kGroupNormThreads == kThreads, "groupnorm_plan.h sizes blocks of kThreads threads");

// A running float32 (count, mean, M2) and Chan's merge of two of them.
struct Moments {
  float n, mean, m2;
};

__device__ __forceinline__ Moments merge(Moments a, Moments b) {
  const float n = a.n + b.n;
  if (b.n == 0.0f) return a;
  if (a.n == 0.0f) return b;
  const float f = b.n / n, delta = b.mean - a.mean;
  return Moments{n, fmaf(delta, f, a.mean), a.m2 + b.m2 + delta * delta * a.n * f};
}

__device__ __forceinline__ Moments warp_merge(Moments m) {
  for (int off = 16; off > 0; off >>= 1) {
    const Moments o{__shfl_down_sync(0xffffffffu, m.n, off), __shfl_down_sync(0xffffffffu, m.mean, off),
                    __shfl_down_sync(0xffffffffu, m.m2, off)};
    m = merge(m, o);
  }
  return m;
}

// Lane 0 of warp 0 gets the block's moments.
__device__ __forceinline__ Moments block_merge(Moments m) {
  __shared__ Moments warps[kThreads / 32];
  m = warp_merge(m);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warps[warp] = m;
  __syncthreads();
  if (warp == 0) m = warp_merge(lane < kThreads / 32 ? warps[lane] : Moments{0.0f, 0.0f, 0.0f});
  return m;
}

template <int W>
__device__ __forceinline__ void load_vec(const void* p, int dt, int64_t i, float v[W]) {
  if constexpr (W == kVec) {
    ld8(p, dt, i, v);
  } else {
    v[0] = ld(p, dt, i);
  }
}

template <int W>
__device__ __forceinline__ void store_vec(void* p, int dt, int64_t i, const float v[W]) {
  if constexpr (W == kVec) {
    st8(p, dt, i, v);
  } else {
    st(p, dt, i, v[0]);
  }
}

// Block blockIdx.x = group * splits + k takes elements [k * chunk, min((k + 1) * chunk, count))
// of its group; partial[blockIdx.x] = their (mean, M2).
template <int W>
__global__ void __launch_bounds__(kThreads) groupnorm_stats_kernel(const void* x, int dt, const void* temb, int tdt,
                                                            bool before, int64_t C, int64_t HW, int64_t G,
                                                            int64_t count, int64_t chunk, int64_t splits,
                                                            float2* partial) {
  const int64_t grp = blockIdx.x / splits, k = blockIdx.x - grp * splits;
  const int64_t b = grp / G, c0 = (grp - b * G) * (C / G);
  const int64_t base = grp * count;  // (b * C + g * C/G) * HW
  const int64_t lo = k * chunk, hi = lo + chunk < count ? lo + chunk : count;
  Moments m{0.0f, 0.0f, 0.0f};
  RowWalk pos(lo + int64_t(threadIdx.x) * W, int64_t(kThreads) * W, HW);
  for (int64_t off = lo + int64_t(threadIdx.x) * W; off < hi; off += int64_t(kThreads) * W, pos.advance()) {
    float v[W];
    load_vec<W>(x, dt, base + off, v);
    const float add = before ? ld(temb, tdt, b * C + c0 + pos.row) : 0.0f;
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      v[j] += add;
      s += v[j];
    }
    const float mean = s * (1.0f / W);
    float m2 = 0.0f;
#pragma unroll
    for (int j = 0; j < W; ++j) m2 = fmaf(v[j] - mean, v[j] - mean, m2);
    m = merge(m, Moments{static_cast<float>(W), mean, m2});
  }
  m = block_merge(m);
  if (threadIdx.x == 0) partial[blockIdx.x] = make_float2(m.mean, m.m2);
}

// Row (b, c): merges the partials of its group and writes shift, scale, add for groupnorm_apply_kernel:
// y = (x - shift) * scale + add = ((x + temb_before) - mean) * rstd * w + bias + temb_after.
__global__ void groupnorm_finalize_kernel(const float2* partial, const void* weight, int wdt, const void* bias, int bdt,
                                   const void* temb, int tdt, int temb_mode, int64_t B, int64_t C, int64_t G,
                                   int64_t count, int64_t chunk, int64_t splits, float eps, float* shift,
                                   float* scale, float* add) {
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < B * C;
       row += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = row / C, c = row - b * C, grp = b * G + c / (C / G);
    Moments m{0.0f, 0.0f, 0.0f};
    for (int64_t k = 0; k < splits; ++k) {
      const float2 p = partial[grp * splits + k];
      const int64_t n = count - k * chunk < chunk ? count - k * chunk : chunk;
      m = merge(m, Moments{static_cast<float>(n), p.x, p.y});
    }
    const float rstd = 1.0f / sqrtf(m.m2 / static_cast<float>(count) + eps);
    const float t = temb_mode == TEMB_NONE ? 0.0f : ld(temb, tdt, row);
    shift[row] = temb_mode == TEMB_BEFORE_NORM ? m.mean - t : m.mean;
    scale[row] = rstd * ld(weight, wdt, c);
    add[row] = ld(bias, bdt, c) + (temb_mode == TEMB_AFTER_NORM ? t : 0.0f);
  }
}

template <int W>
__global__ void __launch_bounds__(kThreads) groupnorm_apply_kernel(void* out, const void* x, int dt, const float* shift,
                                                            const float* scale, const float* add, bool silu,
                                                            int64_t total, int64_t HW) {
  const int64_t first = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * W;
  const int64_t step = int64_t(gridDim.x) * blockDim.x * W;
  RowWalk pos(first, step, HW);
  for (int64_t i = first; i < total; i += step, pos.advance()) {
    float v[W];
    load_vec<W>(x, dt, i, v);
    const float sh = shift[pos.row], sc = scale[pos.row], ad = add[pos.row];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      float y = fmaf(v[j] - sh, sc, ad);
      if (silu) y = y / (1.0f + expf(-y));
      v[j] = y;
    }
    store_vec<W>(out, dt, i, v);
  }
}

bool vector_path(const void* out, const void* x, int64_t HW) {
  return HW % kVec == 0 && octet_aligned(x) && octet_aligned(out);
}

}  // namespace

int64_t groupnorm_temb_silu_workspace_floats(int64_t B, int64_t C, int64_t HW, int64_t num_groups) {
  if (B * C * HW == 0) return 0;
  // whichever path the launch takes (it depends on the pointers' alignment)
  const int64_t splits = groupnorm_workspace_splits(B, C, HW, num_groups);
  return 2 * B * num_groups * splits + 3 * B * C;
}

cudaError_t launch_groupnorm_temb_silu(void* out, const void* x, int dtype, const void* weight, int w_dtype,
                                       const void* bias, int b_dtype, const void* temb, int temb_dtype, int64_t B,
                                       int64_t C, int64_t HW, int64_t num_groups, float eps, int temb_mode,
                                       bool apply_silu, float* workspace, cudaStream_t stream) {
  if (B * C * HW == 0) return cudaSuccess;
  const bool vec = vector_path(out, x, HW);
  const GroupNormPlan p = groupnorm_plan(B, C, HW, num_groups, vec ? kVec : 1);
  const int64_t stats_blocks = B * num_groups * p.splits;
  if (stats_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  float2* partial = reinterpret_cast<float2*>(workspace);
  float* shift = workspace + 2 * stats_blocks;
  float* scale = shift + B * C;
  float* add = scale + B * C;
  const bool before = temb_mode == TEMB_BEFORE_NORM;
  const auto blocks = static_cast<unsigned int>(stats_blocks);
  if (vec) {
    groupnorm_stats_kernel<kVec><<<blocks, kThreads, 0, stream>>>(x, dtype, temb, temb_dtype, before, C, HW,
                                                                  num_groups, p.count, p.chunk, p.splits, partial);
  } else {
    groupnorm_stats_kernel<1><<<blocks, kThreads, 0, stream>>>(x, dtype, temb, temb_dtype, before, C, HW, num_groups,
                                                               p.count, p.chunk, p.splits, partial);
  }
  groupnorm_finalize_kernel<<<blocks_for(B * C), kThreads, 0, stream>>>(partial, weight, w_dtype, bias, b_dtype,
                                                                        temb, temb_dtype, temb_mode, B, C, num_groups,
                                                                        p.count, p.chunk, p.splits, eps, shift,
                                                                        scale, add);
  const int64_t total = B * C * HW;
  if (vec) {
    groupnorm_apply_kernel<kVec><<<blocks_for(total / kVec), kThreads, 0, stream>>>(out, x, dtype, shift, scale,
                                                                                     add, apply_silu, total, HW);
  } else {
    groupnorm_apply_kernel<1><<<blocks_for(total), kThreads, 0, stream>>>(out, x, dtype, shift, scale, add,
                                                                          apply_silu, total, HW);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace ddpm_fast
