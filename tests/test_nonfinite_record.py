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


# --- the sampler: one fused op per step records the NaN ----------------------------------------------

SCHED = NoiseSchedule.linear(40)


class NanFrom(torch.nn.Module):
    """eps = 0.1 x, NaN (or, with a label y, only for the unconditional label 0: the NaN is then
    in the unconditional half of a guided step) at every t <= ``bad_t``."""

    def __init__(self, bad_t: int):
        super().__init__()
        self.bad_t = bad_t
        self.scale = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x, t, y=None):
        hit = (t <= self.bad_t).view(-1, *([1] * (x.dim() - 1)))
        if y is not None:
            hit = hit & (y == 0).view_as(hit)
            return torch.where(hit, float("nan"), self.scale * x + 0.01 * y.view_as(hit))
        return torch.where(hit, float("nan"), self.scale * x)


# compiled cases (CPU Inductor compiles take seconds each): a fused C++ step after a compiled model,
# and the compiled reference step, each with DDPM and DDIM, guided and not
_COMPILED = {("cpp", "ddpm", False), ("cpp", "ddim", True), ("reference", "ddpm", True), ("reference", "ddim", False)}


def _sampler_cases():
    cases = []
    for backend in ("reference", "cpp", "triton"):
        marks = [] if backend == "reference" else [pytest.mark.extension] if backend == "cpp" else [pytest.mark.triton]
        why = None if backend == "reference" else dispatch.unavailable_reason(backend, "cpu")
        marks.append(pytest.mark.skipif(why is not None, reason=str(why)))
        for compile_ in (False, True):
            for sampler in ("ddpm", "ddim"):
                for guided in (False, True):
                    if compile_ and (backend, sampler, guided) not in _COMPILED:
                        continue
                    cases.append(pytest.param(backend, compile_, sampler, guided, marks=marks,
                                              id=f"{backend}-{'compiled' if compile_ else 'eager'}-{sampler}"
                                                 f"{'-guided' if guided else ''}"))
    return cases


@pytest.mark.parametrize("backend,compile_,sampler,guided", _sampler_cases())
def test_sample_raises_naming_the_first_bad_timestep(backend, compile_, sampler, guided):
    """NaN from timestep 17 on (DDIM visits 17: timesteps given): FloatingPointError names 17, through
    the eager loop and the compiled one (CPU), DDPM and DDIM, with guidance the NaN only in the
    unconditional half."""
    kw = dict(schedule=SCHED, seed=0, backend=backend, sampler=sampler, compile=compile_)
    if sampler == "ddim":
        kw.update(timesteps=[39, 30, 22, 17, 9, 0], eta=0.5)
    if guided:
        kw.update(guidance_scale=2.0, model_kwargs={"y": torch.ones(2, dtype=torch.long)},
                  uncond_kwargs={"y": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(FloatingPointError, match="timestep 17;"):
        ddpm_fast.sample(NanFrom(17), (2, 3, 4, 5), **kw)
    if not compile_:
        out = ddpm_fast.sample(NanFrom(17), (2, 3, 4, 5), check_nan=False, **kw)
        assert torch.isnan(out).all()


@pytest.mark.extension
@pytest.mark.skipif(dispatch.unavailable_reason("cpp", "cpu") is not None, reason="no C++ extension")
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_the_fused_record_is_the_only_step_work(monkeypatch, sampler, compile_):
    """Each step calls the backend's out-variant once, with the NaN record, and no step calls
    torch.isfinite (the separate record of the unfused steps)."""
    op = "reverse_step_out" if sampler == "ddpm" else "ddim_step_out"
    real = dispatch.implementations(op)["cpp"]
    calls = []

    def counting(*args):
        calls.append(args[-1])
        return real(*args)
    monkeypatch.setitem(dispatch._registry[op], "cpp", counting)
    monkeypatch.setattr(dispatch, "_resolved", {})
    isfinite = torch.isfinite
    finite_calls = []
    monkeypatch.setattr(torch, "isfinite", lambda *a, **k: finite_calls.append(1) or isfinite(*a, **k))
    kw = dict(sampler=sampler, steps=7) if sampler == "ddim" else {}
    m = NanFrom(-1)
    ddpm_fast.sample(m, (2, 3, 4, 5), schedule=SCHED, seed=0, backend="cpp", compile=compile_, **kw)
    steps = 7 if sampler == "ddim" else 40
    assert len(calls) >= steps and all(isinstance(b, torch.Tensor) and b.dtype == torch.int64 for b in calls)
    assert len(finite_calls) < steps   # the set-up's own checks (schedule table) only, nothing per step


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=pytest.mark.extension)])
@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_the_user_x_T_is_not_written(backend, compile_):
    """The state is the sampler's own buffer, written in place: the user's x_T stays as it was,
    also when it is already contiguous float32 on the device."""
    if dispatch.unavailable_reason(backend, "cpu"):
        pytest.skip(backend)
    x_T = torch.randn(2, 3, 4, 5)
    keep = x_T.clone()
    out = ddpm_fast.sample(NanFrom(-1), (2, 3, 4, 5), schedule=SCHED, seed=0, x_T=x_T, backend=backend,
                           compile=compile_)
    assert torch.equal(x_T, keep) and out.data_ptr() != x_T.data_ptr()
