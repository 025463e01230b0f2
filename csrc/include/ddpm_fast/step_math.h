// The element-wise math of q_sample, reverse_step and ddim_step, written once for the CPU and
// CUDA kernels (docs/ops_contract.md). Coefficients are read from one float64 schedule-table row,
// cast to float32; all element arithmetic is float32, in the reference's order.
#pragma once

#include <cmath>
#include <cstdint>

#include "ddpm_fast/enums.h"
#include "ddpm_fast/macros.h"
#include "ddpm_fast/schedule_columns.h"

namespace ddpm_fast {

// Read a timestep (int32 or int64) for sample b; t_stride is 0 for a scalar t, 1 for t[B].
DDPM_FAST_HD int64_t load_timestep(const void* t, bool t_is_int64, int64_t t_stride, int64_t b) {
  return t_is_int64 ? static_cast<const int64_t*>(t)[b * t_stride]
                    : static_cast<int64_t>(static_cast<const int32_t*>(t)[b * t_stride]);
}

DDPM_FAST_HD float coef(const double* table, int64_t t, int col) {
  return static_cast<float>(table[t * kTableWidth + col]);
}

// NaN, for coefficients of a timestep outside [0, T) (CUDA only: the CPU ops raise instead).
DDPM_FAST_HD float nan_f32() { return __builtin_nanf(""); }

// Classifier-free guidance: the guided model output from the conditional (c) and unconditional
// (u) outputs, diffusers' formula and order: u + w (c - u).
DDPM_FAST_HD float guided_elem(float c, float u, float w) { return u + w * (c - u); }

// ---- q_sample: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps  (Ho et al. eq. 4) -------------------
struct QCoefs {
  float a, s;  // SQRT_ALPHA_BAR, SQRT_ONE_MINUS_ALPHA_BAR
};

DDPM_FAST_HD QCoefs q_coefs(const double* table, int64_t t, int64_t T) {
  if (t < 0 || t >= T) return QCoefs{nan_f32(), nan_f32()};
  return QCoefs{coef(table, t, SQRT_ALPHA_BAR), coef(table, t, SQRT_ONE_MINUS_ALPHA_BAR)};
}

DDPM_FAST_HD float q_sample_elem(const QCoefs& c, float x0, float eps) { return c.a * x0 + c.s * eps; }

// target: eps, x0, or v = sqrt(abar) eps - sqrt(1 - abar) x0.
DDPM_FAST_HD float q_target_elem(const QCoefs& c, float x0, float eps, int target_type) {
  return target_type == PRED_EPSILON ? eps : (target_type == PRED_SAMPLE ? x0 : c.a * eps - c.s * x0);
}

// ---- reverse_step: one ancestral step x_t -> x_{t-1} (Ho et al. Algorithm 2) ------------------
struct ReverseCoefs {
  float k_x, k_m;        // x0 = k_x x + k_m m  (k_m = 1, k_x = 0 for x0 prediction; signs folded in)
  float mean_x0, mean_x; // POSTERIOR_MEAN_COEF1, POSTERIOR_MEAN_COEF2
  float sigma;           // SIGMA_SMALL or SIGMA_LARGE, 0 at t = 0
};

DDPM_FAST_HD ReverseCoefs reverse_coefs(const double* table, int64_t t, int64_t T, int prediction_type,
                                        int variance_type) {
  if (t < 0 || t >= T) {
    const float n = nan_f32();
    return ReverseCoefs{n, n, n, n, n};
  }
  ReverseCoefs c;
  if (prediction_type == PRED_EPSILON) {
    c.k_x = coef(table, t, SQRT_RECIP_ALPHA_BAR);
    c.k_m = coef(table, t, SQRT_RECIPM1_ALPHA_BAR);
  } else if (prediction_type == PRED_SAMPLE) {
    c.k_x = 0.0f;
    c.k_m = 1.0f;
  } else {
    c.k_x = coef(table, t, SQRT_ALPHA_BAR);
    c.k_m = coef(table, t, SQRT_ONE_MINUS_ALPHA_BAR);
  }
  c.mean_x0 = coef(table, t, POSTERIOR_MEAN_COEF1);
  c.mean_x = coef(table, t, POSTERIOR_MEAN_COEF2);
  c.sigma = t > 0 ? coef(table, t, variance_type == VAR_FIXED_SMALL ? SIGMA_SMALL : SIGMA_LARGE) : 0.0f;
  return c;
}

// Clamp that keeps NaN (as torch.clamp does).
DDPM_FAST_HD float clamp_keep_nan(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

template <int kPrediction>
DDPM_FAST_HD float reverse_step_elem(const ReverseCoefs& c, float x, float m, float z, bool clip,
                                     float clip_range) {
  float x0;                                                  // 1. predicted x0
  if (kPrediction == PRED_SAMPLE) {
    x0 = m;
  } else {
    x0 = c.k_x * x - c.k_m * m;
  }
  if (clip) x0 = clamp_keep_nan(x0, -clip_range, clip_range);  // 2. clip
  const float mean = c.mean_x0 * x0 + c.mean_x * x;          // 3. posterior mean (eq. 7)
  return mean + c.sigma * z;                                 // 4. + sigma_t z (sigma = 0 at t = 0)
}

// ---- ddim_step: x_t -> x_{t_prev} (Song et al. eq. 12) ----------------------------------------
struct DdimCoefs {
  float sa, s1a;     // sqrt(abar_t), sqrt(1 - abar_t)
  float sa_prev;     // sqrt(abar_prev)
  float dir;         // sqrt(max(1 - abar_prev - sigma^2, 0))
  float sigma;       // eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(max(1 - abar_t / abar_prev, 0))
};

DDPM_FAST_HD DdimCoefs ddim_coefs(const double* table, int64_t t, int64_t t_prev, int64_t T, float eta,
                                  float final_alpha_bar) {
  if (t < 0 || t >= T || t_prev >= T) {
    const float n = nan_f32();
    return DdimCoefs{n, n, n, n, n};
  }
  const float a = coef(table, t, ALPHA_BAR);
  const float ap = t_prev >= 0 ? coef(table, t_prev, ALPHA_BAR) : final_alpha_bar;
  DdimCoefs c;
  c.sa = sqrtf(a);
  c.s1a = sqrtf(1.0f - a);
  c.sa_prev = sqrtf(ap);
  // 1 - a/ap < 0 where ap < a (final_alpha_bar below abar_t): sigma = 0 there, so eta = 0 stays
  // deterministic instead of 0 * sqrt(negative) = NaN (docs/ops_contract.md, ddim_step)
  const float v = 1.0f - a / ap;
  c.sigma = eta * sqrtf((1.0f - ap) / (1.0f - a)) * sqrtf(v > 0.0f ? v : 0.0f);
  const float d = 1.0f - ap - c.sigma * c.sigma;
  c.dir = sqrtf(d < 0.0f ? 0.0f : d);
  return c;
}

template <int kPrediction>
DDPM_FAST_HD float ddim_step_elem(const DdimCoefs& c, float x, float m, float z, bool clip, float clip_range,
                                  bool add_noise) {
  float x0, eps;
  if (kPrediction == PRED_EPSILON) {
    x0 = (x - c.s1a * m) / c.sa;
    eps = m;
  } else if (kPrediction == PRED_SAMPLE) {
    x0 = m;
    eps = (x - c.sa * x0) / c.s1a;
  } else {
    x0 = c.sa * x - c.s1a * m;
    eps = c.sa * m + c.s1a * x;
  }
  if (clip) {  // clipping changes x0, so eps is re-derived from the clipped x0
    x0 = clamp_keep_nan(x0, -clip_range, clip_range);
    eps = (x - c.sa * x0) / c.s1a;
  }
  float out = c.sa_prev * x0 + c.dir * eps;
  if (add_noise) out = out + c.sigma * z;
  return out;
}

}  // namespace ddpm_fast
