"""Every Triton op against the reference backend (docs/ops_contract.md), on CPU through
TRITON_INTERPRET=1 with small odd shapes, or on CUDA at full size when a GPU is present.

Tolerance (flash-attention's rule): against the reference run in float64 on the same inputs (and
the same Philox noise), the Triton result's error must be at most 2x the error of the reference
run at the test dtype, plus a small floor per dtype (float rounding of log/sin/cos and fused
multiply-adds)."""
import pytest
import torch

from ddpm_fast.ops import dispatch
from ddpm_fast.ops import reference as R
from ddpm_fast.schedule import NoiseSchedule

pytestmark = pytest.mark.triton

from triton_env import DEV, HAS_CUDA, triton_ops_or_skip  # noqa: E402

ops = triton_ops_or_skip()
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1, 1, 1), (3, 5, 7, 9), (1, 4, 6), (2, 3, 8, 8)]
SEED = torch.tensor(0x0123456789ABCDEF, dtype=torch.int64, device=DEV)


@pytest.fixture(scope="module")
def table():
    return NoiseSchedule.linear(100).table(DEV)


def _t(B, per_sample=True, dtype=torch.int64):
    if per_sample:
        return torch.randint(0, 100, (B,), dtype=dtype, device=DEV).index_fill_(0, torch.tensor([0], device=DEV), 0)
    return torch.tensor(37, dtype=dtype, device=DEV)


def _check(got, ref_lowp, ref64, dtype):
    """got vs the float64 reference, within 2x the low-precision reference's error + floor."""
    assert got.dtype == ref_lowp.dtype and got.shape == ref_lowp.shape
    nan = torch.isnan(ref64)
    assert torch.equal(torch.isnan(got), nan)
    err = _max((got.double() - ref64).abs()[~nan])
    err_ref = _max((ref_lowp.double() - ref64).abs()[~nan])
    assert err <= 2 * err_ref + FLOOR[dtype], f"triton err {err:.3g} vs reference err {err_ref:.3g}"


def _max(v: torch.Tensor) -> float:
    return v.max().item() if v.numel() else 0.0


def _both(fn_name, *args, dtype):
    """(triton, reference at dtype, reference in float64) for args whose float tensors are at dtype."""
    up = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64
          else a for a in args]
    return getattr(ops, fn_name)(*args), getattr(R, fn_name)(*args), getattr(R, fn_name)(*up)


def _rand(shape, dtype, noncontig=False):
    if noncontig:  # a transposed view: same shape, non-contiguous strides
        x = torch.randn(*shape[:-2], shape[-1], shape[-2], device=DEV).transpose(-1, -2)
        return x.to(dtype) if dtype != torch.float32 else x
    return torch.randn(shape, device=DEV).to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_q_sample(shape, dtype, table):
    x0, nz = _rand(shape, dtype), _rand(shape, dtype)
    t = _t(shape[0])
    _check(*_both("q_sample", x0, t, table, nz, dtype=dtype), dtype)


@pytest.mark.parametrize("target", [0, 1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_q_sample_seeded(target, dtype, table):
    x0 = _rand((3, 5, 7, 9), dtype)
    t = _t(3)
    got, low, hi = _both("q_sample_seeded", x0, t, table, SEED, 11, target, dtype=dtype)
    for g, lo, h in zip(got, low, hi):
        _check(g, lo, h, dtype)


@pytest.mark.parametrize("pred", [0, 1, 2])
@pytest.mark.parametrize("var", [0, 1])
@pytest.mark.parametrize("clip", [True, False])
def test_reverse_step_fp32_seeded(pred, var, clip, table):
    x, m = _rand((3, 5, 7, 9), torch.float32), _rand((3, 5, 7, 9), torch.float32) * 3
    t = _t(3)  # includes t = 0: no noise there
    _check(*_both("reverse_step", x, m, t, table, None, SEED, 5, pred, var, clip, 1.0, dtype=torch.float32),
           torch.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reverse_step_shapes_dtypes(shape, dtype, table):
    x = _rand(shape, dtype, noncontig=len(shape) == 4 and shape[0] > 1)
    m = _rand(shape, torch.float16 if dtype == torch.bfloat16 else dtype)   # mixed model_out dtype
    t = _t(shape[0], per_sample=shape[0] > 2, dtype=torch.int32)
    _check(*_both("reverse_step", x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, dtype=dtype), dtype)


def test_reverse_step_given_noise_and_out(table):
    x, m, nz = (_rand((2, 3, 8, 8), torch.float32) for _ in range(3))
    t = _t(2)
    _check(*_both("reverse_step", x, m, t, table, nz, None, 0, 2, 1, True, 1.0, dtype=torch.float32),
           torch.float32)
    ref = ops.reverse_step(x, m, t, table, None, SEED, 0, 0, 0, True, 1.0)
    out = x.clone()
    ops.reverse_step_out(out, m, t, table, None, SEED, 0, 0, 0, True, 1.0, out)   # in place
    assert torch.equal(out, ref)
    res = dispatch.implementation("reverse_step_out", "triton", DEV)(
        x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, torch.empty_like(x))
    assert torch.equal(res, ref)


@pytest.mark.parametrize("pred", [0, 1, 2])
@pytest.mark.parametrize("eta", [0.0, 0.8])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_step(pred, eta, clip, table):
    x, m = _rand((3, 5, 7, 9), torch.float32), _rand((3, 5, 7, 9), torch.float32)
    t = torch.tensor([10, 50, 99], device=DEV)
    tp = torch.tensor([-1, 30, 89], device=DEV)
    args = (x, m, t, tp, table, None, SEED if eta else None, 3, eta, pred, clip, 1.0, 1.0)
    _check(*_both("ddim_step", *args, dtype=torch.float32), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ddim_step_dtypes_given_noise(dtype, table):
    x, m, nz = (_rand((2, 3, 5), dtype) for _ in range(3))
    t, tp = torch.tensor(60, device=DEV), torch.tensor(40, device=DEV, dtype=torch.int32)
    args = (x, m, t, tp, table, nz, None, 0, 1.0, 2, True, 1.0, 0.9)
    _check(*_both("ddim_step", *args, dtype=dtype), dtype)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 9), (2, 4, 3), (2, 6, 4, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_temb_add(shape, dtype):
    h = _rand(shape, dtype, noncontig=len(shape) == 4)
    temb = _rand(shape[:2], torch.float32)
    _check(*_both("temb_add", h, temb, dtype=dtype), dtype)


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("silu", [True, False])
def test_groupnorm_temb_silu_modes(mode, silu):
    x = _rand((3, 6, 7, 9), torch.float32) * 2 + 1
    w, b, temb = _rand((6,), torch.float32), _rand((6,), torch.float32), _rand((3, 6), torch.float32)
    _check(*_both("groupnorm_temb_silu", x, w, b, temb if mode else None, 3, 1e-5, mode, silu,
                  dtype=torch.float32), torch.float32)


@pytest.mark.parametrize("shape,groups", [((1, 1, 1, 3), 1), ((3, 5, 7, 9), 5), ((2, 4, 6), 2),
                                          ((1, 8, 8, 8), 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_groupnorm_temb_silu_shapes_dtypes(shape, groups, dtype):
    x = _rand(shape, dtype, noncontig=shape[0] > 1 and len(shape) == 4)
    C = shape[1]
    w, b, temb = _rand((C,), dtype), _rand((C,), dtype), _rand(shape[:2], dtype)
    _check(*_both("groupnorm_temb_silu", x, w, b, temb, groups, 1e-5, 1, True, dtype=dtype), dtype)


def test_groupnorm_chunked_large_group():
    """A group larger than the biggest block (8192): two passes, chunk-merged statistics,
    with a large mean (no E[x^2] - E[x]^2 cancellation)."""
    x = _rand((1, 2, 96, 96), torch.float32) * 0.1 + 50.0     # one group of 18432 elements
    w, b, temb = _rand((2,), torch.float32), _rand((2,), torch.float32), _rand((1, 2), torch.float32)
    _check(*_both("groupnorm_temb_silu", x, w, b, temb, 1, 1e-6, 2, True, dtype=torch.float32), torch.float32)


def test_float64_data(table):
    x, m = _rand((2, 3, 5), torch.float64), _rand((2, 3, 5), torch.float64)
    t = _t(2)
    got = ops.reverse_step(x, m, t, table, None, SEED, 0, 2, 0, True, 1.0)
    ref = R.reverse_step(x, m, t, table, None, SEED, 0, 2, 0, True, 1.0)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)   # noise is float32 in both


def test_chunk_invariance(table):
    """A batch split into chunks with sample offsets gives the same result as the whole batch."""
    x, m = _rand((4, 3, 5, 5), torch.float32), _rand((4, 3, 5, 5), torch.float32)
    t = torch.tensor([9, 8, 7, 6], device=DEV)
    full = ops.reverse_step(x, m, t, table, None, SEED, 100, 0, 0, True, 1.0)
    parts = [ops.reverse_step(x[i:i + 2], m[i:i + 2], t[i:i + 2], table, None, SEED, 100 + i, 0, 0, True, 1.0)
             for i in (0, 2)]
    assert torch.equal(full, torch.cat(parts))
    xt, eps = ops.q_sample_seeded(x, t, table, SEED, 0, 0)
    xt2, eps2 = ops.q_sample_seeded(x[1:], t[1:], table, SEED, 1, 0)
    assert torch.equal(xt[1:], xt2) and torch.equal(eps[1:], eps2)


def test_front_dispatches_to_triton():
    import ddpm_fast.ops as O
    sched = NoiseSchedule.linear(100)
    x, m = _rand((2, 3, 4, 4), torch.float32), _rand((2, 3, 4, 4), torch.float32)
    a = O.reverse_step(x, m, 5, sched, seed=3, backend="triton")
    b = O.reverse_step(x, m, 5, sched, seed=3, backend="reference")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert "triton" in O.backends() and O.backends()["triton"] == "available"


def test_bad_inputs(table):
    x = _rand((2, 3, 4), torch.float32)
    t = _t(2)
    with pytest.raises(ValueError, match="table"):
        ops.q_sample(x, t, table.float(), x)
    with pytest.raises(ValueError, match="shape"):
        ops.q_sample(x, t, table, x[:, :2])
    with pytest.raises(ValueError, match=r"shape \[\] or \[2\]"):
        ops.q_sample(x, torch.zeros(3, dtype=torch.int64, device=DEV), table, x)
    with pytest.raises(TypeError, match="seed"):
        ops.q_sample_seeded(x, t, table, SEED.int(), 0, 0)
    with pytest.raises(TypeError, match="float32, float16"):
        ops.temb_add(x.int(), x[:, :, 0])
    with pytest.raises(ValueError, match="noise tensor or a seed"):
        ops.reverse_step(x, x, t, table, None, None, 0, 0, 0, True, 1.0)
    with pytest.raises(ValueError, match="prediction_type"):
        ops.reverse_step(x, x, t, table, None, SEED, 0, 7, 0, True, 1.0)
    with pytest.raises(ValueError, match="num_groups"):
        ops.groupnorm_temb_silu(x, x[0, :, 0], x[0, :, 0], None, 2, 1e-5, 0, True)
    with pytest.raises(ValueError, match="temb"):
        ops.groupnorm_temb_silu(x, x[0, :, 0], x[0, :, 0], None, 3, 1e-5, 1, True)
    with pytest.raises(ValueError, match="out must be"):
        ops.reverse_step_out(x, x, t, table, None, SEED, 0, 0, 0, True, 1.0, x.t() if x.dim() == 2 else x[:, :1])


# --- GPU only: full size and Triton vs the CUDA extension ---------------------------------------

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_full_size_gpu(dtype, table):
    shape = (256, 3, 32, 32)
    x, m = _rand(shape, dtype), _rand(shape, dtype)
    t = torch.randint(0, 100, (256,), device=DEV)
    _check(*_both("reverse_step", x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, dtype=dtype), dtype)
    got, low, hi = _both("q_sample_seeded", x, t, table, SEED, 0, 2, dtype=dtype)
    for g, lo, h in zip(got, low, hi):
        _check(g, lo, h, dtype)
    h = _rand((64, 128, 16, 16), dtype)
    w, b, temb = _rand((128,), dtype), _rand((128,), dtype), _rand((64, 128), dtype)
    _check(*_both("groupnorm_temb_silu", h, w, b, temb, 32, 1e-5, 1, True, dtype=dtype), dtype)
    _check(*_both("temb_add", h, temb, dtype=dtype), dtype)


def _cuda_ext_reason():
    if not HAS_CUDA:
        return "needs a CUDA device"
    return dispatch._unavailable_reason("cuda", "cuda")


@pytest.mark.cuda
@pytest.mark.extension
@pytest.mark.skipif(_cuda_ext_reason() is not None, reason=f"CUDA extension unavailable: {_cuda_ext_reason()}")
@pytest.mark.parametrize("op", ["reverse_step", "q_sample_seeded", "ddim_step", "philox_uniform"])
def test_triton_vs_cuda_extension(op, table):
    tri = dispatch.implementation(op, "triton", DEV)
    cud = dispatch.implementation(op, "cuda", DEV)
    x, m = _rand((256, 3, 32, 32), torch.float32), _rand((256, 3, 32, 32), torch.float32)
    t = torch.randint(1, 100, (256,), device=DEV)
    if op == "reverse_step":
        args = (x, m, t, table, None, SEED, 0, 0, 0, True, 1.0)
    elif op == "q_sample_seeded":
        args = (x, t, table, SEED, 0, 2)
    elif op == "ddim_step":
        args = (x, m, t, t - 1, table, None, SEED, 0, 0.5, 0, True, 1.0, 1.0)
    else:
        args = (SEED, t, 256, 3 * 32 * 32, 0, 1)
    a, b = tri(*args), cud(*args)
    if op == "philox_uniform":
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
