// Columns of the schedule table (float64 [T, 16], one 128-byte row per timestep).
// Mirrors ddpm_fast.schedule.Col; tests/test_extension_headers.py parses this file and compares.
#pragma once

namespace ddpm_fast {

constexpr int kTableWidth = 16;

enum Col : int {
  BETA = 0,
  ALPHA = 1,
  ALPHA_BAR = 2,
  ALPHA_BAR_PREV = 3,
  SQRT_ALPHA_BAR = 4,
  SQRT_ONE_MINUS_ALPHA_BAR = 5,
  SQRT_RECIP_ALPHA_BAR = 6,
  SQRT_RECIPM1_ALPHA_BAR = 7,
  POSTERIOR_VARIANCE = 8,
  POSTERIOR_LOG_VARIANCE_CLIPPED = 9,
  POSTERIOR_MEAN_COEF1 = 10,
  POSTERIOR_MEAN_COEF2 = 11,
  SIGMA_SMALL = 12,
  SIGMA_LARGE = 13,
};

}  // namespace ddpm_fast
