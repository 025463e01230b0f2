"""Integer codes shared by the Python front, the op schemas, the C++/CUDA and Triton kernels."""

PRED_EPSILON, PRED_SAMPLE, PRED_V = 0, 1, 2
VAR_FIXED_SMALL, VAR_FIXED_LARGE = 0, 1
TEMB_NONE, TEMB_BEFORE_NORM, TEMB_AFTER_NORM = 0, 1, 2
# columns of multistep_update's coefficient table (float64 [steps, MS_WIDTH]); the history
# slots' coefficients are columns MS_HISTORY .. MS_HISTORY + MS_MAX_HISTORY - 1
MS_X0_X, MS_X0_M, MS_X, MS_X0, MS_HISTORY = 0, 1, 2, 3, 4
MS_MAX_HISTORY, MS_WIDTH = 3, 8

PREDICTION_TYPES = {"epsilon": PRED_EPSILON, "sample": PRED_SAMPLE, "v_prediction": PRED_V}
# accepted spellings (diffusers, lucidrains' objectives) -> canonical name
PREDICTION_ALIASES = {"epsilon": "epsilon", "eps": "epsilon", "pred_noise": "epsilon",
                      "sample": "sample", "x0": "sample", "pred_x0": "sample",
                      "v_prediction": "v_prediction", "v": "v_prediction", "pred_v": "v_prediction"}
VARIANCE_TYPES = {"fixed_small": VAR_FIXED_SMALL, "fixed_large": VAR_FIXED_LARGE}
TEMB_MODES = {None: TEMB_NONE, "none": TEMB_NONE, "before_norm": TEMB_BEFORE_NORM,
              "after_norm": TEMB_AFTER_NORM}


def prediction_code(name: str) -> int:
    canonical = PREDICTION_ALIASES.get(name)
    if canonical is None:
        raise ValueError(f"unknown prediction_type {name!r}; use one of {sorted(PREDICTION_ALIASES)}")
    return PREDICTION_TYPES[canonical]


def variance_code(name: str) -> int:
    if name not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance_type {name!r}; use one of {sorted(VARIANCE_TYPES)}")
    return VARIANCE_TYPES[name]
