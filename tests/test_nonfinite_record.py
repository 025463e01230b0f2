"""The NaN record fused into the step kernels (docs/ops_contract.md, ``first_bad``):
reverse_step_out / ddim_step_out update an int64 ``first_bad`` to max(first_bad, t[b] of every
sample b whose model output, as the step reads it, holds a NaN/inf) in the same pass, on every
backend; and the sampler uses it (one op per step, no separate isfinite) and raises naming the
first bad timestep."""
from __future__ import annotations

import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule
from ddpm_fast import ops as O
from ddpm_fast.ops import dispatch

S = NoiseSchedule.linear(1000)
HAS_CUDA = torch.cuda.is_available()


def _backends():
    """(backend, device) for every backend; those that cannot run here are skipped with why."""
    out = [pytest.param("reference", "cpu", id="reference")]
    for b, dev, marks in (("cpp", "cpu", [pytest.mark.extension]),
                          ("cuda", "cuda", [pytest.mark.extension, pytest.mark.cuda]),
                          ("triton", "cuda" if HAS_CUDA else "cpu", [pytest.mark.triton])):
        why = dispatch.unavailable_reason(b, dev)
        out.append(pytest.param(b, dev, id=b, marks=marks + [pytest.mark.skipif(why is not None, reason=str(why))]))
    return out


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
BACKENDS = _backends()


def _step(op, x, m, t, dev, backend, out=None, first_bad=None, w=None):
    """One step through the Python front (DDPM seeded, DDIM eta > 0 seeded: both draw noise)."""
    t = t.to(dev)
    if op == "reverse_step":
        return O.reverse_step(x, m, t, S, seed=7, guidance_scale=w, out=out, first_bad=first_bad, backend=backend)
    t_prev = (t - 10).clamp(min=-1)
    return O.ddim_step(x, m, t, t_prev, S, eta=0.5, seed=7, guidance_scale=w, out=out, first_bad=first_bad,
                       backend=backend)


def _inputs(shape, dtype, dev, guided=False, layout="contiguous"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dev, dtype)
    mshape = (2 * shape[0], *shape[1:]) if guided else shape
    if layout == "transposed":   # non-contiguous model_out: last two dims swapped
        m = torch.randn(*mshape[:-2], mshape[-1], mshape[-2], generator=g).transpose(-1, -2)
    else:
        m = torch.randn(mshape, generator=g)
    return x, m.to(dev, dtype)


def _record(op, x, m, t, dev, backend, start=-1, w=None, shape=()):
    fb = torch.full(shape, start, dtype=torch.int64, device=dev)
    _step(op, x, m, t, dev, backend, first_bad=fb, w=w)
    return int(fb.reshape(()))


OPS = ["reverse_step", "ddim_step"]


@pytest.mark.parametrize("backend,dev", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_one_bad_element_records_its_samples_t(backend, dev, op, dtype, value):
    """Odd sizes, several CPU blocks per sample (N = 4551 > 2048), the bad element in the last
    partial block of sample 1: first_bad becomes that sample's t, and only it."""
    x, m = _inputs((3, 3, 41, 37), dtype, dev)
    m[1, 2, 40, 36] = value
    t = torch.tensor([900, 400, 600])
    assert _record(op, x, m, t, dev, backend) == 400


@pytest.mark.parametrize("backend,dev", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_per_sample_t_records_the_largest_bad_t(backend, dev, op):
    x, m = _inputs((4, 2, 5, 7), torch.float32, dev)
    m[0, 0, 0, 0] = float("nan")      # t = 300
    m[2, 1, 4, 6] = float("inf")      # t = 700
    t = torch.tensor([300, 800, 700, 100])
    assert _record(op, x, m, t, dev, backend) == 700


@pytest.mark.parametrize("backend,dev", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_model_out_and_scalar_t(backend, dev, op):
    x, m = _inputs((2, 3, 5, 7), torch.float32, dev, layout="transposed")
    assert not m.is_contiguous()
    m[1, 2, 4, 3] = float("nan")
    assert _record(op, x, m, torch.tensor(555), dev, backend, shape=(1,)) == 555


@pytest.mark.parametrize("backend,dev", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("half", ["conditional", "unconditional"])
def test_guided_nan_in_either_half(backend, dev, op, half):
    """With guidance the step reads rows b and B + b: a NaN only in the unconditional half of
    sample 1 (row B + 1) is recorded with sample 1's t."""
    x, m = _inputs((3, 2, 5, 7), torch.float32, dev, guided=True)
    m[1 if half == "conditional" else 3 + 1, 1, 2, 3] = float("nan")
    t = torch.tensor([900, 250, 600])
    assert _record(op, x, m, t, dev, backend, w=3.0) == 250


@pytest.mark.parametrize("backend,dev", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_an_earlier_larger_record_is_kept_and_finite_input_changes_nothing(backend, dev, op):
    x, m = _inputs((2, 3, 5, 7), torch.float32, dev)
    t = torch.tensor([500, 40])
    assert _record(op, x, m, t, dev, backend) == -1          # finite: stays -1
    assert _record(op, x, m, t, dev, backend, start=17) == 17
    m[1, 0, 0, 0] = float("nan")
    assert _record(op, x, m, t, dev, backend, start=900) == 900   # max(900, 40)
    assert _record(op, x, m, t, dev, backend, start=10) == 40


@pytest.mark.parametrize("backend,dev", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("guided", [False, True], ids=["plain", "guided"])
def test_out_variant_equals_the_functional_op_bitwise_also_in_place(backend, dev, op, dtype, guided):
    """The recording out-variant writes exactly the functional op's result, into a fresh out and
    into x_t itself (out aliasing x_t), with a NaN in the input (NaNs in the same places)."""
    x, m = _inputs((2, 3, 5, 7), dtype, dev, guided=guided)
    m[0, 1, 1, 1] = float("nan")
    t = torch.tensor([700, 3])
    w = 2.5 if guided else None
    want = _step(op, x, m, t, dev, backend, w=w)
    fb = torch.full((1,), -1, dtype=torch.int64, device=dev)
    got = _step(op, x, m, t, dev, backend, out=torch.empty_like(x), first_bad=fb, w=w)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert int(fb) == 700
    x_alias = x.clone()
    fb.fill_(-1)
    got = _step(op, x_alias, m, t, dev, backend, out=x_alias, first_bad=fb, w=w)
    assert got is x_alias
    torch.testing.assert_close(x_alias, want, rtol=0, atol=0, equal_nan=True)
    assert int(fb) == 700


@pytest.mark.parametrize("backend,dev", BACKENDS)
def test_backend_level_call_with_first_bad_of_shape_scalar(backend, dev):
    """The backend interface (what the sampler calls): first_bad [] after out, positionally."""
    x, m = _inputs((2, 4, 3), torch.float32, dev)
    m[1, 3, 2] = float("-inf")
    d = torch.device(dev)
    fb = torch.tensor(-1, device=d)
    t = torch.tensor([30, 20], device=d)
    seed = torch.tensor(3, device=d)
    O.implementation("reverse_step_out", backend, d)(x, m, t, S.table(d), None, seed, 0, 0, 0, True, 1.0, None,
                                                      x, fb)
    assert int(fb) == 20
    fb.fill_(-1)
    O.implementation("ddim_step_out", backend, d)(x, m, t, t - 5, S.table(d), None, None, 0, 0.0, 0, True, 1.0,
                                                   1.0, None, x, fb)
    assert int(fb) == 20


@pytest.mark.parametrize("backend,dev", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_front_refuses_a_bad_first_bad(backend, dev, op):
    x, m = _inputs((2, 4, 3), torch.float32, dev)
    t = torch.tensor([30, 20])
    for bad in (torch.tensor([-1], dtype=torch.int32), torch.full((2,), -1), torch.tensor([-1.0])):
        with pytest.raises(TypeError, match=rf"{op}: first_bad must be one int64 value \(\[\] or \[1\]\)"):
            _step(op, x, m, t, dev, backend, first_bad=bad.to(dev))


@pytest.mark.extension
@pytest.mark.skipif(dispatch.unavailable_reason("cpp", "cpu") is not None, reason="no C++ extension")
def test_direct_cpp_call_checks_first_bad():
    x = torch.randn(2, 4, 3)
    t = torch.tensor([30, 20])
    table, seed = S.table("cpu"), torch.tensor(3)
    with pytest.raises(RuntimeError, match=r"ddpm_fast::reverse_step_out: first_bad must be one int64 value"):
        torch.ops.ddpm_fast.reverse_step_out(x, x, t, table, None, seed, 0, 0, 0, True, 1.0, None, x,
                                             torch.tensor([-1], dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"ddpm_fast::ddim_step_out: first_bad must be one int64 value"):
        torch.ops.ddpm_fast.ddim_step_out(x, x, t, t - 5, table, None, None, 0, 0.0, 0, True, 1.0, 1.0, None, x,
                                          torch.full((2,), -1))
    with pytest.raises(RuntimeError, match=r"ddpm_fast::ddim_step_out: out must be"):
        torch.ops.ddpm_fast.ddim_step_out(x, x, t, t - 5, table, None, None, 0, 0.0, 0, True, 1.0, 1.0, None,
                                          x.double(), None)
