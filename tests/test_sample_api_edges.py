"""sample() at the edges of its API, against a closed form: with a model predicting eps = 0 and
deterministic DDIM (eta = 0, no clipping), every step keeps x0 = x_T / sqrt(alpha_bar at the first
step), so the result is that, for every state dtype, for seed=None, with a progress bar, and for
a model returning a tuple."""
import pytest
import torch

import ddpm_fast
from ddpm_fast import ops

BETAS = torch.linspace(1e-3, 0.2, 20, dtype=torch.float64)
SHAPE = (3, 2, 5, 5)


def _expected(seed):
    """x_T / sqrt(alpha_bar_{T-1}) in float64; x_T is the Philox stream-0 normal (bitwise the
    same uniforms on every backend; the normal itself from the float32 reference generator)."""
    ab = torch.cumprod(1 - BETAS, 0)
    x_T = ops.randn(SHAPE, seed, backend="reference").double()
    return x_T / ab[-1].sqrt()


def _zero_eps(x, t):
    return torch.zeros_like(x)


def _run(model=_zero_eps, **kw):
    args = dict(schedule=ddpm_fast.NoiseSchedule(BETAS), sampler="ddim", steps=20, eta=0.0,
                clip_denoised=False, seed=7)
    args.update(kw)
    return ddpm_fast.sample(model, SHAPE, **args)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-5), (torch.float32, 1e-5),
                                        (torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_state_dtypes_give_the_closed_form(dtype, rtol):
    x = _run(dtype=dtype)
    assert x.dtype == dtype and x.shape == SHAPE
    torch.testing.assert_close(x.double(), _expected(7), rtol=rtol, atol=rtol)


def test_seed_none_draws_from_torch_generator():
    torch.manual_seed(123)
    a = _run(seed=None)
    torch.manual_seed(123)
    b = _run(seed=None)
    c = _run(seed=None)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_progress_bar_changes_nothing(capsys):
    a = _run(progress=True)
    err = capsys.readouterr().err
    assert "20/20" in err
    torch.testing.assert_close(a.double(), _expected(7), rtol=1e-5, atol=1e-5)


def test_model_returning_a_tuple_is_unwrapped():
    x = _run(model=lambda x, t: (torch.zeros_like(x), "extra"))
    torch.testing.assert_close(x.double(), _expected(7), rtol=1e-5, atol=1e-5)
