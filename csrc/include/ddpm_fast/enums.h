// Integer codes used in the op schemas. Mirrors ddpm_fast/ops/enums.py (checked by
// tests/test_extension_headers.py) and ddpm_fast/noise.py's stream numbers.
#pragma once

namespace ddpm_fast {

enum Prediction : int { PRED_EPSILON = 0, PRED_SAMPLE = 1, PRED_V = 2 };
enum Variance : int { VAR_FIXED_SMALL = 0, VAR_FIXED_LARGE = 1 };
enum TembMode : int { TEMB_NONE = 0, TEMB_BEFORE_NORM = 1, TEMB_AFTER_NORM = 2 };
// multistep_update's coefficient table: columns of one float64 row per step
enum MultistepColumn : int { MS_X0_X = 0, MS_X0_M = 1, MS_X = 2, MS_X0 = 3, MS_HISTORY = 4,
                             MS_MAX_HISTORY = 3, MS_WIDTH = 8 };
enum Stream : int { STREAM_INIT = 0, STREAM_STEP = 1, STREAM_Q_SAMPLE = 2 };

// Storage dtype of a data tensor handed to a kernel (arithmetic is always float32).
enum DType : int { DT_FLOAT32 = 0, DT_FLOAT16 = 1, DT_BFLOAT16 = 2 };

}  // namespace ddpm_fast
