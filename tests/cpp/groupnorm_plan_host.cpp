// Host check of the CUDA groupnorm_temb_silu work split (csrc/include/ddpm_fast/groupnorm_plan.h)
// for tests/test_groupnorm_plan.py. For each "B C HW G" on the command line and each vector width
// (8, 1), walks every stats block and thread as groupnorm_stats_kernel does, and every thread of
// groupnorm_apply_kernel's grid-stride loop over a small grid, checking that each element is
// visited exactly once, that RowWalk's row is element / HW, and the plan's bounds. Prints one
// line per failure; exit status 1 if any.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ddpm_fast/groupnorm_plan.h"

using namespace ddpm_fast;

static int failures = 0;

static void fail(const char* what, long long B, long long C, long long HW, long long G, int w) {
  std::printf("FAIL %s: B=%lld C=%lld HW=%lld G=%lld w=%d\n", what, B, C, HW, G, w);
  ++failures;
}

static void check(int64_t B, int64_t C, int64_t HW, int64_t G, int w) {
  const GroupNormPlan p = groupnorm_plan(B, C, HW, G, w);
  if (p.splits < 1 || p.chunk % w != 0 || (p.splits - 1) * p.chunk >= p.count || p.splits * p.chunk < p.count)
    fail("plan bounds", B, C, HW, G, w);
  if (p.splits > groupnorm_workspace_splits(B, C, HW, G)) fail("workspace", B, C, HW, G, w);
  const int64_t T = kGroupNormThreads;
  // stats: block (grp, k), thread t walks [k * chunk, min(.., count)) in steps of T * w
  std::vector<unsigned char> seen(static_cast<size_t>(p.count));
  for (int64_t k = 0; k < p.splits; ++k) {
    const int64_t lo = k * p.chunk, hi = lo + p.chunk < p.count ? lo + p.chunk : p.count;
    for (int64_t t = 0; t < T; ++t) {
      RowWalk pos(lo + t * w, T * w, HW);
      for (int64_t off = lo + t * w; off < hi; off += T * w, pos.advance()) {
        if (pos.row != off / HW || pos.col != off % HW) fail("stats row walk", B, C, HW, G, w);
        for (int j = 0; j < w; ++j) {
          if (off + j >= hi || (off + j) / HW != pos.row) fail("stats vector straddles", B, C, HW, G, w);
          ++seen[static_cast<size_t>(off + j)];
        }
      }
    }
  }
  for (unsigned char s : seen) {
    if (s != 1) {
      fail("stats coverage", B, C, HW, G, w);
      break;
    }
  }
  // apply: a grid of 3 blocks (grid-stride loop of several turns)
  const int64_t total = B * C * HW, step = 3 * T * w;
  std::vector<unsigned char> out(static_cast<size_t>(total));
  for (int64_t th = 0; th < 3 * T; ++th) {
    RowWalk pos(th * w, step, HW);
    for (int64_t i = th * w; i < total; i += step, pos.advance()) {
      if (pos.row != i / HW) fail("apply row walk", B, C, HW, G, w);
      for (int j = 0; j < w; ++j) ++out[static_cast<size_t>(i + j)];
    }
  }
  for (unsigned char s : out) {
    if (s != 1) {
      fail("apply coverage", B, C, HW, G, w);
      break;
    }
  }
}

int main(int argc, char** argv) {
  for (int a = 1; a + 3 < argc; a += 4) {
    const int64_t B = std::atoll(argv[a]), C = std::atoll(argv[a + 1]), HW = std::atoll(argv[a + 2]),
                  G = std::atoll(argv[a + 3]);
    check(B, C, HW, G, 1);
    if (HW % kGroupNormVec == 0) check(B, C, HW, G, kGroupNormVec);
  }
  return failures ? 1 : 0;
}
