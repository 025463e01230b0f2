"""ddpm_fast.sample's arguments: bad values are typed errors that name the argument and what to
pass, raised before any model call; the process-wide backend applies; chunking never changes a
sample (per-sample kwargs are a documented rule, shared ones are marked)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule
from ddpm_fast.ops import BackendUnavailableError
from ddpm_fast.samplers import loop

SCHED = NoiseSchedule.linear(20)


class Eps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t):
        return torch.tanh(x * self.w)


class NeverCalled(torch.nn.Module):
    """Fails the test if sample() gets as far as calling the model."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x, t, **kw):
        raise AssertionError("the model was called: the argument was not checked up front")


def _sample(model=None, shape=(2, 1, 4, 4), **kw):
    return ddpm_fast.sample(model if model is not None else NeverCalled(), shape,
                            **{"schedule": SCHED, "seed": 0, **kw})


# --- the process default backend -------------------------------------------------------------

@pytest.fixture
def backend_spy(monkeypatch):
    """The backend names the sampler resolves its ops with."""
    asked = []
    real = loop.implementation

    def spy(op, backend, device):
        asked.append(backend)
        return real(op, backend, device)
    monkeypatch.setattr(loop, "implementation", spy)
    return asked


@pytest.mark.parametrize("how", ["set_backend", "use_backend"])
def test_sample_follows_the_process_default_backend(backend_spy, how):
    if how == "set_backend":
        old = ddpm_fast.get_backend()
        ddpm_fast.set_backend("reference")
        try:
            _sample(Eps())
        finally:
            ddpm_fast.set_backend(old)
    else:
        with ddpm_fast.use_backend("reference"):
            _sample(Eps())
    assert backend_spy and set(backend_spy) == {"reference"}
    backend_spy.clear()
    _sample(Eps(), backend="auto")          # an explicit backend= still wins
    assert set(backend_spy) == {"auto"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_process_default_that_cannot_run_is_an_error_not_a_silent_cpu_run():
    with ddpm_fast.use_backend("cuda"), pytest.raises(BackendUnavailableError, match="cuda"):
        _sample(Eps())


def test_sample_follows_the_backend_environment_variable():
    code = ("import ddpm_fast, torch\n"
            "from ddpm_fast.samplers import loop\n"
            "asked = []\n"
            "real = loop.implementation\n"
            "loop.implementation = lambda op, b, d: asked.append(b) or real(op, b, d)\n"
            "sched = ddpm_fast.NoiseSchedule.linear(4)\n"
            "ddpm_fast.sample(lambda x, t: 0 * x, (1, 1, 2, 2), schedule=sched, seed=0)\n"
            "print(sorted(set(asked)))\n")
    env = {**os.environ, "DDPM_FAST_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['reference']"


def test_unknown_backend_names_the_argument():
    with pytest.raises(ValueError, match="backend must be"):
        _sample(backend="fastest")


# --- shape ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2.7, 1, 8.9, 8), (2.0, 1, 4, 4), "28", (True, 1, 4), 2,
                                   (2, "1", 4, 4), (2, None, 4)])
def test_shape_is_never_coerced(shape):
    with pytest.raises(TypeError, match="shape"):
        _sample(shape=shape)


@pytest.mark.parametrize("shape", [torch.Size([2, 1, 3, 3]), [2, 1, 3, 3], (np.int64(2), 1, 3, 3)])
def test_shape_accepts_ints_and_torch_size(shape):
    assert _sample(Eps(), shape=shape).shape == (2, 1, 3, 3)


# --- per-sample and shared model kwargs under chunking ----------------------------------------

class TableModel(torch.nn.Module):
    """Uses a lookup table shared by all samples (every row matters to every sample) and
    per-sample labels."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, t, table, y):
        assert isinstance(table, torch.Tensor) and table.shape[0] == 4, "the table reached the model whole"
        return self.w * x + table.sum() / 10 + y.view(-1, 1, 1, 1).float() / 10


def test_shared_kwargs_reach_every_chunk_whole_and_per_sample_ones_are_sliced():
    table = torch.arange(4.0)                   # 4 rows = B: looks per-sample to the rule
    y = torch.tensor([0, 1, 2, 3])
    kw = {"model_kwargs": {"table": ddpm_fast.Shared(table), "y": y}}
    whole = _sample(TableModel(), (4, 1, 2, 2), **kw)
    for chunk in (1, 3):
        assert torch.equal(_sample(TableModel(), (4, 1, 2, 2), chunk_size=chunk, **kw), whole)
    # each sample equals itself sampled alone (its label row, its noise offset)
    alone = _sample(TableModel(), (1, 1, 2, 2), sample_offset=2,
                    model_kwargs={"table": ddpm_fast.Shared(table), "y": y[2:3]})
    assert torch.equal(alone, whole[2:3])


def test_shared_kwargs_on_the_compiled_path():
    table = torch.arange(4.0)
    y = torch.tensor([3, 1, 0, 2])
    kw = {"model_kwargs": {"table": ddpm_fast.Shared(table), "y": y}, "backend": "reference"}
    eager = _sample(TableModel(), (4, 1, 2, 2), **kw)
    fast = _sample(TableModel(), (4, 1, 2, 2), chunk_size=2, compile={"backend": "eager"}, **kw)
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-6)


# --- clear messages -------------------------------------------------------------------------

@pytest.mark.parametrize("args, error, words", [
    ({"device": "meta"}, ValueError, "meta device"),
    ({"sampler": "ddim", "steps": 5, "eta": "0.5"}, TypeError, "eta must be a float"),
    ({"sampler": "ddim", "steps": 5, "eta": math.inf}, ValueError, "eta must be a finite"),
    ({"sampler": "ddim", "steps": 5, "eta": math.nan}, ValueError, "eta must be a finite"),
    ({"sampler": "ddim", "steps": 5, "eta": True}, TypeError, "eta must be a float"),
    ({"dtype": "float32"}, TypeError, r"dtype must be a torch dtype.*torch\.float32"),
    ({"dtype": torch.int32}, TypeError, "dtype must be one of"),
    ({"model_kwargs": [1, 2]}, TypeError, "model_kwargs must be a dict"),
    ({"model_kwargs": {1: 2}}, TypeError, "model_kwargs' keys"),
    ({"shape": (2.5, 1, 4, 4)}, TypeError, "shape must hold ints"),
    ({"chunk_size": 2.5}, ValueError, "chunk_size must be an int"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be an int"),
])
def test_bad_arguments_name_themselves_before_the_model_runs(args, error, words):
    with pytest.raises(error, match=words):
        _sample(**args)


def test_a_model_on_the_meta_device_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="meta device.*load_state_dict"):
        _sample(NeverCalled().to("meta"))


@pytest.mark.parametrize("betas, where", [
    ([1e-20] + [0.01] * 9, "1 - alpha_bar rounds to 0"),            # 1 - alpha_bar_0 == 0
    ([0.1, 1.0] + [0.01] * 8, "alpha_bar reaches 0 before the last"),  # alpha_bar = 0 mid-way
])
def test_a_schedule_with_non_finite_coefficients_is_blamed_not_the_model(betas, where):
    sched = NoiseSchedule(betas, prediction_type="v_prediction")
    with pytest.raises(ValueError, match=f"schedule.*non-finite.*{where}"):
        _sample(schedule=sched)


def test_zero_terminal_snr_stays_allowed_with_v_prediction():
    sched = NoiseSchedule.make("linear", 10, zero_terminal_snr=True)
    out = _sample(Eps(), schedule=sched, prediction_type="v_prediction")
    assert torch.isfinite(out).all()


class Float64Net:
    """A plain callable (no parameters sample() could read) around a float64 layer."""

    def __init__(self):
        self.conv = torch.nn.Conv2d(1, 1, 1).double()

    def __call__(self, x, t):
        return self.conv(x)


def test_a_dtype_clash_inside_a_callable_says_which_dtype_to_pass():
    with pytest.raises(TypeError, match=r"dtype torch\.float32.*dtype="):
        _sample(Float64Net())
    out = _sample(Float64Net(), dtype=torch.float64)       # the callable gets x in dtype=
    assert out.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_a_float32_module_sampled_in_another_dtype_gets_float32_input(dtype):
    out = _sample(Eps(), dtype=dtype)
    assert out.dtype == dtype and torch.isfinite(out).all()
