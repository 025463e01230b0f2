"""The ops contract (docs/ops_contract.md), one test for every backend: each op of the op table
(ddpm_fast/ops/table.py) x each available fused backend (cpp, cuda, triton) x data dtype x
shape/stride case, against the reference backend evaluated in float64 on the same inputs (and
the same Philox noise), plus opcheck of every torch op namespace over the same inputs.

One tolerance rule for every backend (flash-attention's): the fused result's largest error against
the float64 reference is at most max(floor x scale, 2 x the error of the reference run at the same
low precision), floor = 1e-6 for float32 and half an ulp for float16 / bfloat16 (2**-11, 2**-8),
scale = the largest magnitude among the output and the data inputs. A kernel that rounds an
intermediate to a 16-bit dtype (instead of keeping the math in float32) fails it.

Adding an op: one ``Case`` per shape/stride situation in CASES (csrc/README.md).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
import torch

from ddpm_fast.ops import dispatch, reference
from ddpm_fast.ops.table import BY_NAME, OPS
from ddpm_fast.schedule import NoiseSchedule

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FLOOR = {torch.float32: 1e-6, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
T = 1000


def _backends() -> list:
    """(backend, device) pairs that can run here, each marked for its test selection."""
    out = []
    for backend, dev, marks in (("cpp", "cpu", [pytest.mark.extension]),
                                ("cuda", "cuda", [pytest.mark.extension, pytest.mark.cuda]),
                                ("triton", "cuda" if HAS_CUDA else "cpu", [pytest.mark.triton])):
        why = dispatch.unavailable_reason(backend, dev)
        out.append(pytest.param(backend, dev, id=backend,
                                marks=marks + [pytest.mark.skipif(why is not None, reason=f"{backend}: {why}")]))
    return out


# --- inputs -------------------------------------------------------------------------------------

def _data(shape, dtype, dev, layout="contiguous"):
    """Random data: contiguous, "transposed" (last two dims swapped: non-contiguous strides) or
    "sliced" (every other element of the last dim of a wider tensor)."""
    if layout == "transposed" and len(shape) >= 2:
        return torch.randn(*shape[:-2], shape[-1], shape[-2], device=dev).transpose(-1, -2).to(dtype)
    if layout == "sliced":
        return torch.randn(*shape[:-1], 2 * shape[-1], device=dev)[..., ::2].to(dtype)
    return torch.randn(shape, device=dev).to(dtype)


def _t(B, dev, kind="per-sample", dtype=torch.int64):
    """Timesteps: per-sample [B] (0 and T-1 included), one scalar [], an expanded [B] view
    (stride 0), or a sliced [B] view (stride 2)."""
    if kind == "scalar":
        return torch.tensor(421, device=dev, dtype=dtype)
    if kind == "expanded":
        return torch.tensor([733], device=dev, dtype=dtype).expand(B)
    if kind == "sliced":
        return torch.randint(0, T, (2 * B,), device=dev, dtype=dtype)[::2]
    t = torch.randint(0, T, (B,), device=dev, dtype=dtype)
    t[0] = 0
    if B > 2:
        t[1] = T - 1
    return t


def _table(dev, layout="contiguous"):
    """The schedule table, or ("colmajor") the same values in a non-contiguous column-major view."""
    table = NoiseSchedule.linear(T).table(dev)
    return table.t().contiguous().t() if layout == "colmajor" else table


def _seed(dev):
    return torch.tensor(0x1234_5678_9ABC_DEF0, dtype=torch.int64, device=dev)


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    name: str
    build: Callable          # (device, dtype) -> the op's arguments (backend interface)
    dtypes: tuple = tuple(DTYPES)

    @property
    def id(self):
        return f"{self.op}-{self.name}"


def _model_out(shape, dtype, dev, layout, w):
    """model_out of a step: x's shape, or [2B, ...] (both halves) with guidance scale w."""
    return _data(shape if w is None else (2 * shape[0], *shape[1:]), dtype, dev, layout)


def _step(shape, layout, t_kind, pred, var, clip, noise=False, mixed=False, w=None, table="contiguous"):
    def build(dev, dtype):
        x = _data(shape, torch.float32 if mixed else dtype, dev)
        m = _model_out(shape, dtype, dev, layout, w)
        z = _data(shape, dtype, dev, layout) if noise else None
        return (x, m, _t(shape[0], dev, t_kind), _table(dev, table), z, None if noise else _seed(dev), 11, pred, var,
                clip, 1.0, w)
    return build


def _ddim_t(B, dev, t_kind, t_prev):
    """DDIM's (t, t_prev): t_prev 50 below t ("table"), -1 ("final") or both alternating ("mixed");
    t_kind "expanded" gives both as stride-0 views, "sliced" as stride-2 views."""
    if t_kind == "expanded":
        t = torch.tensor([733], device=dev).expand(B)
    else:
        t = torch.randint(50, T, (B,), device=dev)
    tp = {"table": t - 50, "final": torch.full_like(t, -1),
          "mixed": torch.where(torch.arange(B, device=dev) % 2 == 0, t - 50, -1)}[t_prev]
    if t_kind == "expanded":
        return t, tp[:1].expand(B)
    if t_kind == "sliced":
        wide_t, wide_tp = torch.full((2 * B,), 7, device=dev), torch.full((2 * B,), 3, device=dev)
        wide_t[::2], wide_tp[::2] = t, tp
        return wide_t[::2], wide_tp[::2]
    return t, tp


def _ddim(shape, layout, pred, eta, clip, t_prev, noise=False, w=None, t_kind="per-sample", table="contiguous"):
    def build(dev, dtype):
        B = shape[0]
        t, tp = _ddim_t(B, dev, t_kind, t_prev)
        z = _data(shape, dtype, dev) if noise and eta > 0 else None
        seed = _seed(dev) if eta > 0 and not noise else None
        m = _model_out(shape, dtype, dev, layout if w is not None else "contiguous", w)
        return (_data(shape, dtype, dev, layout), m, t, tp, _table(dev, table), z, seed, 2, eta, pred, clip, 1.0,
                0.9991, w)
    return build


def _groupnorm(shape, groups, mode, silu, layout="contiguous", loc=1.0, spread=3.0):
    def build(dev, dtype):
        x = (_data(shape, torch.float32, dev, layout) * spread + loc).to(dtype)
        w, b = _data(shape[1:2], dtype, dev), _data(shape[1:2], dtype, dev)
        temb = _data(shape[:2], dtype, dev) if mode else None
        return (x, w, b, temb, groups, 1e-5, mode, silu)
    return build


def _philox(B, numel, offset, stream, t_kind):
    def build(dev, dtype):
        return (_seed(dev), _t(B, dev, t_kind), B, numel, offset, stream)
    return build


def _multistep(shape, K, layout, step_kind="scalar", mixed=False, w=None):
    """Random coefficients (some large, as 1/alpha is early in eps-prediction runs), K history
    buffers, the step as [] or [1]; with guidance scale ``w`` model_out is [2B, ...]."""
    def build(dev, dtype):
        g = torch.Generator().manual_seed(K)
        table = (torch.randn(5, 8, generator=g, dtype=torch.float64) * torch.tensor(
            [30.0, 30.0, 1, 1, 1, 1, 1, 0], dtype=torch.float64)).to(dev)
        h = _data((K, *shape), dtype, dev, layout)
        step = torch.tensor(3, device=dev) if step_kind == "scalar" else torch.tensor([4], device=dev,
                                                                                         dtype=torch.int32)
        m_shape = shape if w is None else (2 * shape[0], *shape[1:])
        return (_data(shape, dtype, dev, layout), _data(m_shape, torch.float32 if mixed else dtype, dev, layout), h,
                table, step, w)
    return build


def _attention(B, H, Nq, Nk, D, layout):
    """q [B, H, Nq, D], k, v [B, H, Nk, D]: "heads" = views of [B, N, H*D] projections (a diffusers
    attention block's layout), else _data's layouts."""
    def build(dev, dtype):
        if layout == "heads":
            q, k, v = (torch.randn(B, n, H * D, device=dev).to(dtype).view(B, n, H, D).transpose(1, 2)
                       for n in (Nq, Nk, Nk))
        else:
            q, k, v = (_data((B, H, n, D), dtype, dev, layout) for n in (Nq, Nk, Nk))
        return (q, k, v, D ** -0.5)
    return build


F32 = (torch.float32,)
CASES = [
    Case("philox_normal", "odd", _philox(3, 37, 5, 1, "per-sample"), F32),
    Case("philox_normal", "last-offset", _philox(2, 4099, 2 ** 32 - 2, 2, "scalar"), F32),
    Case("philox_uniform", "odd", _philox(3, 37, 5, 1, "per-sample"), F32),
    Case("philox_uniform", "expanded-t", _philox(4, 9, 0, 0, "expanded"), F32),
    Case("q_sample", "odd-transposed", lambda d, dt: (_data((3, 5, 7, 9), dt, d, "transposed"), _t(3, d),
                                                      _table(d), _data((3, 5, 7, 9), dt, d))),
    Case("q_sample", "batch1-sliced-t", lambda d, dt: (_data((1, 1, 1, 1), dt, d), _t(1, d, "sliced"), _table(d),
                                                       _data((1, 1, 1, 1), dt, d, "sliced"))),
    Case("q_sample_seeded", "v-int32-t", lambda d, dt: (_data((3, 5, 7, 9), dt, d, "transposed"),
                                                        _t(3, d, dtype=torch.int32), _table(d), _seed(d), 3, 2)),
    Case("q_sample_seeded", "eps-expanded-t", lambda d, dt: (_data((4, 3, 6, 6), dt, d), _t(4, d, "expanded"),
                                                             _table(d), _seed(d), 0, 0)),
    Case("q_sample_seeded", "x0", lambda d, dt: (_data((2, 4, 5), dt, d), _t(2, d), _table(d), _seed(d), 7, 1)),
    Case("reverse_step", "eps-small-clip", _step((3, 5, 7, 9), "transposed", "per-sample", 0, 0, True)),
    Case("reverse_step", "v-large-noise", _step((2, 3, 8, 8), "sliced", "expanded", 2, 1, False, noise=True)),
    Case("reverse_step", "x0-batch1", _step((1, 1, 1, 1), "contiguous", "scalar", 1, 0, True)),
    Case("reverse_step", "eps-colmajor-table", _step((3, 5, 7, 9), "contiguous", "per-sample", 0, 0, True,
                                                     table="colmajor")),
    Case("reverse_step", "mixed-dtypes", _step((3, 5, 7, 9), "sliced", "sliced", 0, 0, True, noise=True,
                                               mixed=True)),
    # classifier-free guidance fused into the step: model_out [2B, ...], odd sizes, non-contiguous
    Case("reverse_step", "guided-eps-transposed", _step((3, 5, 7, 9), "transposed", "per-sample", 0, 0, True,
                                                        w=3.5)),
    Case("reverse_step", "guided-v-noise-mixed", _step((2, 3, 5, 7), "sliced", "scalar", 2, 1, False, noise=True,
                                                       mixed=True, w=-0.75)),
    Case("reverse_step", "guided-x0-batch1", _step((1, 1, 1, 1), "contiguous", "expanded", 1, 0, False, w=7.0)),
    Case("reverse_step_out", "eps", lambda d, dt: (*_step((4, 3, 5, 5), "transposed", "per-sample", 0, 0, True)(d, dt),
                                                   torch.empty(4, 3, 5, 5, dtype=dt, device=d))),
    Case("reverse_step_out", "guided", lambda d, dt: (
        *_step((3, 3, 5, 5), "sliced", "per-sample", 0, 0, True, w=2.0)(d, dt),
        torch.empty(3, 3, 5, 5, dtype=dt, device=d))),
    # with the NaN record (first_bad, tests/test_nonfinite_record.py checks what it records)
    Case("reverse_step_out", "record", lambda d, dt: (
        *_step((3, 3, 5, 5), "contiguous", "per-sample", 0, 0, True)(d, dt),
        torch.empty(3, 3, 5, 5, dtype=dt, device=d), torch.full((1,), -1, dtype=torch.int64, device=d))),
    Case("ddim_step", "eps-deterministic", _ddim((3, 5, 7, 9), "transposed", 0, 0.0, False, "table")),
    Case("ddim_step", "x0-eta-mixed-t-prev", _ddim((4, 3, 5, 5), "contiguous", 1, 0.5, True, "mixed")),
    Case("ddim_step", "v-final-noise", _ddim((2, 6, 4, 4), "sliced", 2, 1.0, True, "final", noise=True)),
    Case("ddim_step", "guided-eps-transposed", _ddim((3, 5, 7, 9), "transposed", 0, 0.0, False, "table", w=4.0)),
    Case("ddim_step", "guided-x0-eta-mixed", _ddim((4, 3, 5, 5), "sliced", 1, 0.5, True, "mixed", w=1.5)),
    Case("ddim_step", "guided-v-final-noise", _ddim((2, 6, 4, 3), "contiguous", 2, 1.0, True, "final", noise=True,
                                                    w=0.0)),
    Case("ddim_step_out", "eps-eta", lambda d, dt: (
        *_ddim((4, 3, 5, 5), "transposed", 0, 0.5, True, "mixed")(d, dt), torch.empty(4, 3, 5, 5, dtype=dt, device=d))),
    Case("ddim_step_out", "guided-record", lambda d, dt: (
        *_ddim((3, 5, 7, 9), "contiguous", 2, 1.0, True, "final", w=1.5)(d, dt),
        torch.empty(3, 5, 7, 9, dtype=dt, device=d), torch.full((), -1, dtype=torch.int64, device=d))),
    Case("ddim_step", "expanded-t-colmajor-table", _ddim((3, 4, 5, 5), "contiguous", 0, 0.5, False, "table",
                                                         t_kind="expanded", table="colmajor")),
    Case("ddim_step", "sliced-t-mixed-prev", _ddim((4, 3, 5, 5), "transposed", 2, 1.0, True, "mixed",
                                                   t_kind="sliced")),
    Case("multistep_update", "k0-odd", _multistep((3, 5, 7), 0, "contiguous")),
    Case("multistep_update", "k1-transposed", _multistep((2, 3, 5, 9), 1, "transposed", "one", mixed=True)),
    Case("multistep_update", "k2-sliced", _multistep((1, 1, 3, 3), 2, "sliced")),
    Case("multistep_update", "k3-odd", _multistep((3, 5, 7, 9), 3, "transposed")),
    Case("multistep_update", "guided-k2-transposed", _multistep((3, 5, 7, 9), 2, "transposed", w=3.0)),
    Case("multistep_update", "guided-k0-mixed", _multistep((1, 3, 5, 5), 0, "sliced", "one", mixed=True, w=-0.75)),
    Case("temb_add", "batch1", lambda d, dt: (_data((1, 1, 1), dt, d), _data((1, 1), dt, d))),
    Case("temb_add", "odd-transposed", lambda d, dt: (_data((3, 5, 7, 9), dt, d, "transposed"),
                                                      _data((3, 5), dt, d))),
    Case("temb_add", "5d", lambda d, dt: (_data((2, 6, 4, 4, 3), dt, d), _data((2, 6), dt, d, "transposed"))),
    Case("groupnorm_temb_silu", "before-norm", _groupnorm((3, 6, 7, 9), 3, 1, True)),
    Case("groupnorm_temb_silu", "after-norm-sliced", _groupnorm((1, 8, 6, 6), 4, 2, True, "sliced")),
    Case("groupnorm_temb_silu", "no-temb-no-silu", _groupnorm((2, 4, 3000), 2, 0, False)),
    Case("groupnorm_temb_silu", "large-group-large-mean", _groupnorm((1, 2, 96, 96), 1, 2, True, loc=50.0,
                                                                     spread=0.1), F32),
    Case("attention", "heads", _attention(1, 8, 64, 64, 8, "heads")),
    Case("attention", "odd-transposed", _attention(2, 3, 37, 19, 5, "transposed")),
    Case("attention", "sliced-d33", _attention(1, 2, 17, 33, 33, "sliced")),
    Case("conv3x3", "k3-odd", lambda d, dt: (_data((2, 5, 7, 9), dt, d, "transposed"), _data((3, 5, 3, 3), dt, d),
                                             _data((3,), dt, d))),
    Case("conv3x3", "unet-no-bias", lambda d, dt: (_data((1, 16, 8, 8), dt, d).contiguous(memory_format=torch.channels_last),
                                                   _data((24, 16, 3, 3), dt, d), None)),
]
PARAMS = [pytest.param(c, dt, id=f"{c.id}-{str(dt)[6:]}") for c in CASES for dt in c.dtypes]


def test_every_op_of_the_table_has_a_case():
    """A new table entry without a case here fails, so every op is tested on every backend."""
    assert {c.op for c in CASES} == {op.name for op in OPS if op.reference}


# --- the contract ---------------------------------------------------------------------------------

def _skip_without_kernel(op: str, backend: str) -> None:
    """CPU-only ops (OpSpec.cuda False, ops/table.py) have no CUDA kernel nor Triton launcher."""
    if backend not in dispatch.implementations(op):
        pytest.skip(f"{op} has no {backend} kernel (CPU only: the reference runs it elsewhere)")


def _f64(args):
    return tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _reference(op: str):
    return dispatch.implementations(op)["reference"]


def _results(op, args, res):
    """The op's output tensors: the result, or ``out`` for an out-variant."""
    if BY_NAME[op].out_of:
        return (args[BY_NAME[op].out_index],)
    return res if isinstance(res, tuple) else (res,)


def _check(op, ours, args):
    ref64 = _results(op, _f64(args), _reference(op)(*_f64(args)))
    lo_args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    ref_lo = _results(op, lo_args, _reference(op)(*lo_args))
    data = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64]
    for o, r64, rlo in zip(ours, ref64, ref_lo):
        assert o.dtype == rlo.dtype and o.shape == r64.shape
        assert torch.equal(o.isnan(), r64.isnan())
        if not o.numel():
            continue
        scale = max([r64.nan_to_num().abs().max().item(), 1e-30] + [a.abs().max().item() for a in data if a.numel()])
        err = (o.double() - r64).nan_to_num().abs().max().item()
        err_ref = (rlo.double() - r64).nan_to_num().abs().max().item()
        bound = max(FLOOR[o.dtype if o.dtype in FLOOR else torch.float32] * scale, 2 * err_ref)
        assert err <= bound, f"error {err:.3g} > bound {bound:.3g} (reference's own error {err_ref:.3g})"


@pytest.mark.parametrize("backend,dev", _backends())
@pytest.mark.parametrize("case,dtype", PARAMS)
def test_op_matches_float64_reference(backend, dev, case, dtype):
    _skip_without_kernel(case.op, backend)
    args = case.build(torch.device(dev), dtype)
    fn = dispatch.implementation(case.op, backend, torch.device(dev))
    ours = _results(case.op, args, fn(*args))
    if case.op == "philox_uniform":   # the uniforms are exact in float32: bitwise on every backend
        assert torch.equal(ours[0], _reference(case.op)(*args))
    _check(case.op, ours, args)


@pytest.mark.parametrize("backend,dev", _backends())
def test_float64_data_follows_the_reference(backend, dev):
    """float64 data: the compiled backends hand it to the reference, Triton computes in float64."""
    case = next(c for c in CASES if c.op == "reverse_step")
    args = case.build(torch.device(dev), torch.float64)
    got = dispatch.implementation("reverse_step", backend, torch.device(dev))(*args)
    torch.testing.assert_close(got, _reference("reverse_step")(*args), rtol=1e-12, atol=1e-6)


@pytest.mark.parametrize("backend,dev", _backends())
def test_out_of_range_timestep_is_nan_or_error(backend, dev):
    """An out-of-range t (a direct backend call; the front checks it) is an error where the host
    can check it without a sync (CPU) and NaN on a device (csrc/README.md), never a wild read."""
    d = torch.device(dev)
    x = torch.randn(2, 8, device=d)
    t = torch.tensor([1, T], device=d)
    fn = dispatch.implementation("q_sample", backend, d)
    if backend == "cpp":
        with pytest.raises(RuntimeError, match="out of range"):
            fn(x, t, _table(d), x)
        return
    y = fn(x, t, _table(d), x)
    assert y[0].isfinite().all() and y[1].isnan().all()
    y = dispatch.implementation("ddim_step", backend, d)(x, x, torch.tensor(5, device=d), torch.tensor([T, 2], device=d),
                                                          _table(d), None, None, 0, 0.0, 0, True, 1.0, 1.0, None)
    assert y[0].isnan().all() and y[1].isfinite().all()


@pytest.mark.parametrize("backend,dev", _backends())
def test_multistep_step_past_the_table_is_nan_or_error(backend, dev):
    """multistep_update reads its coefficient row at ``step`` on the device: past the table it is
    an error on the CPU and NaN elsewhere, as a timestep is."""
    d = torch.device(dev)
    x = torch.randn(2, 8, device=d)
    table = torch.ones(3, 8, dtype=torch.float64, device=d)
    fn = dispatch.implementation("multistep_update", backend, d)
    h = torch.zeros(1, 2, 8, device=d)
    if backend == "cpp":
        with pytest.raises(RuntimeError, match="out of range"):
            fn(x, x, h, table, torch.tensor(3, device=d), None)
        return
    out, x0 = fn(x, x, h, table, torch.tensor(3, device=d), None)
    assert out.isnan().all() and x0.isnan().all()


# --- torch.library: schema, fakes, dispatch ------------------------------------------------------

def _namespaces():
    out = []
    for ns, backend, dev in (("ddpm_fast", "cpp", "cpu"), ("ddpm_fast", "cuda", "cuda"),
                             ("ddpm_fast_triton", "triton", "cuda" if HAS_CUDA else "cpu")):
        why = dispatch.unavailable_reason(backend, dev)
        out.append(pytest.param(ns, dev, id=f"{ns}-{dev}",
                                marks=[pytest.mark.skipif(why is not None, reason=f"{backend}: {why}")]))
    return out


@pytest.mark.parametrize("ns,dev", _namespaces())
@pytest.mark.parametrize("case", [c for c in CASES if c.name in {
    "odd", "odd-transposed", "v-int32-t", "v-large-noise", "eps", "x0-eta-mixed-t-prev", "5d", "before-norm",
    "k3-odd", "guided-eps-transposed", "guided", "record", "guided-record", "heads"}],
    ids=lambda c: c.id)
def test_opcheck(ns, dev, case):
    """opcheck over the contract's inputs: schema (the out-variants mutate ``out`` and ``first_bad`` only),
    the table's fakes against the real outputs, and AOT dispatch."""
    if not hasattr(getattr(torch.ops, ns), case.op) or (dev != "cpu" and not BY_NAME[case.op].cuda):
        pytest.skip(f"{ns}::{case.op} has no {dev} kernel")
    args = case.build(torch.device(dev), torch.bfloat16 if case.name == "v-large-noise" else torch.float32)
    torch.library.opcheck(getattr(getattr(torch.ops, ns), case.op), args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


# --- the Python front: each argument rule once, the same error on every backend ---------------------

def _front_backends():
    return [pytest.param("reference", id="reference")] + [
        pytest.param(p.values[0], id=p.id, marks=p.marks) for p in _backends() if p.values[0] != "cuda" or HAS_CUDA]


def _bad_calls():
    """(call, error type, message) for inputs every backend must refuse before any work."""
    import ddpm_fast.ops as O
    s = NoiseSchedule.linear(20)
    x = torch.randn(2, 3, 4)
    return [
        (lambda b, d: O.reverse_step(x.to(d), x.to(d), 5, s, seed=1, sample_offset=2 ** 32 - 1, backend=b),
         ValueError, r"sample_offset \+ batch must be <= 2\*\*32"),
        (lambda b, d: O.q_sample(x.to(d), 5, s, seed=1, sample_offset=2 ** 32 + 5, backend=b),
         ValueError, r"sample_offset \+ batch must be <= 2\*\*32"),
        (lambda b, d: O.randn((2, 3), 1, sample_offset=2 ** 32, device=d, backend=b),
         ValueError, r"sample_offset \+ batch must be <= 2\*\*32"),
        (lambda b, d: O.reverse_step(x.to(d), x.to(d), 5, s, seed=1, sample_offset=-1, backend=b),
         ValueError, "sample_offset must be an int >= 0"),
        (lambda b, d: O.reverse_step(x.to(d), x.to(d), 5, s, seed=1, clip_range=-1.0, backend=b),
         ValueError, r"clip_range must be a number in \(0, inf\)"),
        (lambda b, d: O.reverse_step(x.to(d), x.to(d), 5, s, seed=1, clip_range=float("nan"), backend=b),
         ValueError, "clip_range must be a number"),
        (lambda b, d: O.ddim_step(x.to(d), x.to(d), 5, 2, s, final_alpha_bar=2.0, backend=b),
         ValueError, r"final_alpha_bar must be a number in \(0, 1\]"),
        (lambda b, d: O.ddim_step(x.to(d), x.to(d), 5, 2, s, final_alpha_bar=0.0, backend=b),
         ValueError, "final_alpha_bar must be a number"),
        (lambda b, d: O.ddim_step(x.to(d), x.to(d), 5, torch.tensor(7, device=d), s, backend=b),
         ValueError, "t_prev must be <= t"),
        (lambda b, d: O.ddim_step(x.to(d), x.to(d), 5, 2, s, eta=float("inf"), seed=1, backend=b),
         ValueError, r"eta must be a finite number in \[0, inf\)"),
        (lambda b, d: O.ddim_step(x.to(d), x.to(d), 5, 2, s, eta=float("nan"), seed=1, backend=b),
         ValueError, "eta must be a finite number"),
        (lambda b, d: O.randn((2, 3), 1, dtype=torch.int64, device=d, backend=b),
         TypeError, "dtype must be a floating torch.dtype"),
        (lambda b, d: O.reverse_step(x.to(d), x[:, :2].to(d), 5, s, seed=1, backend=b),
         ValueError, "model_out has shape"),
        (lambda b, d: O.reverse_step(x.to(d), x.to(d), 20, s, seed=1, backend=b),
         ValueError, r"timestep 20 is out of range \[0, 20\)"),
    ]


@pytest.mark.parametrize("backend", _front_backends())
def test_front_rejects_bad_input_the_same_on_every_backend(backend):
    dev = "cuda" if backend in ("cuda", "triton") and HAS_CUDA else "cpu"
    for call, err, match in _bad_calls():
        with pytest.raises(err, match=match):
            call(backend, dev)


def test_sampler_refuses_a_batch_past_the_sample_counter():
    """sample() calls the backends directly: its sample_offset gets the front's rule too."""
    import ddpm_fast
    with pytest.raises(ValueError, match=r"sample_offset \+ batch must be <= 2\*\*32"):
        ddpm_fast.sample(lambda x, t: x, (2, 1, 2, 2), schedule=NoiseSchedule.linear(5), seed=0,
                         sample_offset=2 ** 32 - 1)


def test_reference_generator_refuses_a_wrapping_offset():
    """The reference generator (ddpm_fast.noise) refuses the same offsets: offset 2**32 + 5 would
    otherwise give exactly the noise of offset 5."""
    from ddpm_fast import noise
    with pytest.raises(ValueError, match=r"sample_offset \+ batch must be <= 2\*\*32"):
        noise.philox_normal(1, (1, 4), sample_offset=2 ** 32 + 5)
