"""Property-based tests of the two top-level entry points' arguments: ``sample()`` and the
training config. A draw must give either a typed error naming what was wrong (ValueError /
TypeError; for the config a ConfigError naming one of the fields that was set) or a finite result
of the promised shape and dtype: never another exception, never a silent NaN. Draws per test
come from the hypothesis profile (tests/conftest.py)."""
import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import ddpm_fast
from ddpm_fast.data import ImageData
from ddpm_fast.ops.dispatch import BackendUnavailableError
from ddpm_fast.training import ConfigError, TrainConfig, train

SCHEDULE = ddpm_fast.NoiseSchedule.linear(10)
ODD_FLOATS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30]


def _damped(x, t):
    """A cheap stand-in for a model: eps = 0.1 x (finite for every finite x)."""
    return 0.1 * x


shape_items = st.one_of(st.integers(0, 4), st.sampled_from([-1, 2.5, "3", None, True]))
sample_kwargs = st.fixed_dictionaries({}, optional={
    "sampler": st.sampled_from(["ddpm", "ddim", "euler", "", None]),
    "steps": st.one_of(st.integers(-1, 12), st.sampled_from([2.0, "5", True])),
    "eta": st.one_of(st.floats(0.0, 1.0), st.sampled_from(ODD_FLOATS + ["0.5", None])),
    "seed": st.one_of(st.integers(-2 ** 63, 2 ** 64 - 1), st.sampled_from([None, 1.5, "7", 2 ** 64, -2 ** 63 - 1])),
    "dtype": st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                              "float32", None]),
    "chunk_size": st.one_of(st.integers(-1, 5), st.sampled_from([None, 2.5, "2"])),
    "sample_offset": st.one_of(st.integers(-1, 9), st.sampled_from([2 ** 32 + 1, 2 ** 63, 2 ** 64, 1.0])),
    "prediction_type": st.sampled_from(["epsilon", "sample", "v_prediction", "eps", "score", None]),
    "variance_type": st.sampled_from(["fixed_small", "fixed_large", "learned", None]),
    "clip_denoised": st.sampled_from([True, False, None]),
    "clip_range": st.one_of(st.floats(0.1, 3.0), st.sampled_from(ODD_FLOATS + [None])),
    "timestep_spacing": st.sampled_from(["leading", "trailing", "linspace", "random", None]),
    "return_intermediates": st.booleans(),
    "intermediate_every": st.one_of(st.integers(-1, 4), st.sampled_from([1.5, None])),
    "device": st.sampled_from(["cpu", None, "meta", "tpu"]),
    "backend": st.sampled_from(["auto", "reference", "cpp", None, "fastest"]),
})


@given(shape=st.lists(shape_items, min_size=1, max_size=4), kwargs=sample_kwargs)
def test_sample_arguments_give_a_typed_error_or_finite_images(shape, kwargs):
    try:
        out = ddpm_fast.sample(_damped, shape, schedule=SCHEDULE, **kwargs)
    except (ValueError, TypeError, BackendUnavailableError) as e:   # the last: backend= names one
        assert str(e), "an error without a message"                   # this machine lacks
        return
    x = out[0] if kwargs.get("return_intermediates") else out
    assert tuple(x.shape) == tuple(shape)
    assert x.dtype == (kwargs.get("dtype") or torch.float32)
    assert torch.isfinite(x.float()).all(), "sample() returned NaN/inf from a finite model"


CONFIG_VALUES = {
    "min_snr_gamma": st.one_of(st.none(), st.floats(0.5, 10.0), st.sampled_from(ODD_FLOATS)),
    "ema_decay": st.one_of(st.floats(0.0, 1.0), st.sampled_from(ODD_FLOATS + [1.5])),
    "warmup_steps": st.one_of(st.integers(-2, 3), st.sampled_from([1.5, None])),
    "grad_clip": st.one_of(st.floats(0.0, 5.0), st.sampled_from(ODD_FLOATS)),
    "lr": st.one_of(st.floats(1e-5, 1e-2), st.sampled_from(ODD_FLOATS + ["1e-3"])),
    "lr_schedule": st.sampled_from(["constant", "cosine", "cosinus", None]),
    "min_lr_ratio": st.one_of(st.floats(0.0, 1.0), st.sampled_from(ODD_FLOATS)),
    "weight_decay": st.one_of(st.floats(0.0, 0.1), st.sampled_from(ODD_FLOATS)),
    "betas": st.one_of(st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.999)),
                       st.sampled_from([(0.9,), (1.0, 0.9), (math.nan, 0.9), "0.9"])),
    "optimizer": st.sampled_from(["adamw", "sgd", "adam"]),
    "prediction_type": st.sampled_from(["epsilon", "sample", "v_prediction", "v", "noise"]),
    "schedule": st.sampled_from(["linear", "cosine", "sigmoid", "scaled_linear", "nope"]),
    "T": st.one_of(st.integers(-1, 30), st.sampled_from([2.0, "10"])),
    "batch_size": st.one_of(st.integers(-1, 4), st.sampled_from([2.0, True])),
    "steps": st.one_of(st.integers(-1, 2), st.sampled_from([1.5, "2"])),
    "sample_n": st.integers(-1, 2),
    "sample_steps": st.integers(-1, 40),
    "sampler": st.sampled_from(["ddim", "ddpm", "euler"]),
    "seed": st.one_of(st.integers(-1, 2 ** 64), st.sampled_from([1.0, "0"])),
    "max_nonfinite": st.integers(-1, 3),
    "ckpt_every": st.integers(-1, 2),
    "threads": st.one_of(st.none(), st.integers(-1, 2)),
    "precision": st.sampled_from(["fp32", "bf16", "fp16", "auto", "fp8"]),
}


@given(over=st.fixed_dictionaries({}, optional=CONFIG_VALUES))
def test_training_config_gives_a_named_error_or_trains(over, tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.rand(6, 1, 8, 8, generator=g) * 2 - 1, name="random")
    base = dict(steps=1, batch_size=2, sample_n=0, ckpt_every=0, progress=False, metric=False,
                model_kwargs={"ch": 4, "ch_mult": [1, 2], "attn_resolutions": [], "num_groups": 1},
                out_dir=str(tmp_path_factory.mktemp("run")))
    try:
        cfg = TrainConfig(**{**base, **over})
    except ConfigError as e:
        assert e.field in over, f"ConfigError names {e.field!r}, which was not set"
        return
    res = train(cfg, data=data)
    assert res.step == cfg.steps and len(res.losses) == cfg.steps
    assert all(math.isfinite(v) and v >= 0 for v in res.losses), res.losses   # a weighted MSE
    if cfg.sample_n:
        assert res.samples.shape == (cfg.sample_n, 1, 8, 8) and torch.isfinite(res.samples).all()
