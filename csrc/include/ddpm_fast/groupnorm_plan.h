// How the CUDA groupnorm_temb_silu splits its work (csrc/cuda/groupnorm_temb_silu.cu), as plain
// host/device C++ so tests/test_groupnorm_plan.py can check it on the host: blocks per group, the
// elements each takes, and the division-free walk of a thread over rows of HW elements.
#pragma once

#include <cstdint>

#include "ddpm_fast/macros.h"

namespace ddpm_fast {

constexpr int kGroupNormVec = 8;                    // elements per vector access (16 bytes at 16 bit)
constexpr int kGroupNormThreads = 256;              // threads per stats / apply block
constexpr int64_t kGroupNormStatsPerBlock = 16384;  // elements a stats block takes at least before splitting
constexpr int64_t kGroupNormMinBlocks = 512;        // stats blocks wanted in flight (several per SM)

struct GroupNormPlan {
  int64_t count;   // elements per group, C / G * HW
  int64_t splits;  // stats blocks per group
  int64_t chunk;   // elements per stats block (the last one may take fewer, never none)
};

// Blocks per group: enough for kGroupNormMinBlocks stats blocks in all, at least one per
// kGroupNormStatsPerBlock elements, at most one per kGroupNormThreads vectors of w elements (more
// would leave threads idle); chunk a multiple of w. Needs B * G > 0 and count > 0.
inline GroupNormPlan groupnorm_plan(int64_t B, int64_t C, int64_t HW, int64_t G, int64_t w) {
  GroupNormPlan p;
  p.count = C / G * HW;
  const int64_t useful = (p.count + kGroupNormThreads * w - 1) / (kGroupNormThreads * w);
  int64_t splits = (kGroupNormMinBlocks + B * G - 1) / (B * G);
  const int64_t by_size = (p.count + kGroupNormStatsPerBlock - 1) / kGroupNormStatsPerBlock;
  if (splits < by_size) splits = by_size;
  if (splits > useful) splits = useful;
  if (splits < 1) splits = 1;
  const int64_t per = (p.count + splits - 1) / splits;
  p.chunk = (per + w - 1) / w * w;
  p.splits = (p.count + p.chunk - 1) / p.chunk;
  return p;
}

// The most stats blocks per group either path (vector or one element at a time) can take: the
// workspace is sized before the launch picks its path from the pointers' alignment.
inline int64_t groupnorm_workspace_splits(int64_t B, int64_t C, int64_t HW, int64_t G) {
  const int64_t a = groupnorm_plan(B, C, HW, G, 1).splits, b = groupnorm_plan(B, C, HW, G, kGroupNormVec).splits;
  return a > b ? a : b;
}

// Position (row, offset in row) of a thread walking rows of HW elements from `start` in steps
// of `step` elements, advanced without division (with W-element vectors and HW % W == 0 a
// vector never straddles rows).
struct RowWalk {
  int64_t row, col, step_rows, step_cols, HW;
  DDPM_FAST_HD RowWalk(int64_t start, int64_t step, int64_t hw)
      : row(start / hw), col(start % hw), step_rows(step / hw), step_cols(step % hw), HW(hw) {}
  DDPM_FAST_HD void advance() {
    row += step_rows;
    col += step_cols;
    if (col >= HW) {
      col -= HW;
      ++row;
    }
  }
};

}  // namespace ddpm_fast
