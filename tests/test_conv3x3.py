"""ddpm_fast::conv3x3 (csrc/cpu/conv3x3.cpp), the Winograd F(2x2, 3x3) convolution the compiled
sampler routes UNet convolutions to: what tests/test_ops_contract.py does not cover.

Expected values are float64 ``F.conv2d`` (an independent direct convolution), never the kernel run
twice. The error bound is the contract's: at most twice ATen's float32 convolution's own error
against float64 (or 1e-6 of the output's scale), on sizes that hit every edge of the tiling (odd
heights and widths, a single pixel, channel counts off the 8- and 16-lane padding, tile counts off
the 6-tile kernel and the L2 block). Then what is specific to the kernel: the cached transformed
weights follow every kind of weight update, NaN stays within the 2x2 tiles whose 4x4 patch holds
it, threads do not change a bit, each instruction-set path passes the same checks, and bad inputs
fail with the op's message.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ddpm_fast.ops as O
from ddpm_fast.ops import dispatch
from isa_paths import check_on_isa_path, isa_paths

pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("cpp", "cpu") is not None,
                                reason="the C++ extension is not built")

OP = torch.ops.ddpm_fast.conv3x3.default

# (N, C, K, H, W): tiling edges; the last rows make many tile blocks and several 16-channel blocks
SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 9), (1, 8, 16, 2, 2), (3, 17, 33, 5, 4), (1, 64, 64, 16, 16),
          (2, 32, 3, 32, 31), (1, 3, 32, 33, 32), (1, 40, 200, 9, 13), (1, 130, 24, 6, 6)]


def _bound(got: torch.Tensor, x, w, b) -> tuple:
    """(error of ``got``, allowed error): vs float64, at most max(1e-6 scale, 2 x ATen float32's)."""
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    aten = F.conv2d(x.float(), w.float(), None if b is None else b.float(), padding=1)
    err = (got.double() - ref).abs().max().item()
    aten_err = (aten.double() - ref).abs().max().item()
    scale = max(ref.abs().max().item(), x.abs().max().item(), 1e-30)
    return err, max(1e-6 * scale, 2 * aten_err)


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":   # every other column of a wider tensor: no unit stride anywhere
        wide = torch.zeros(*x.shape[:3], 2 * x.shape[3])
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _check_shape(N, C, K, H, W, layout="contiguous", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g)
    w = torch.randn(K, C, 3, 3, generator=g)
    b = torch.randn(K, generator=g) if bias else None
    got = OP(_layout(x, layout), w, b)
    assert got.shape == (N, K, H, W) and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    err, bound = _bound(got, x, w, b)
    assert err <= bound, f"{(N, C, K, H, W)} {layout}: error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_matches_float64_convolution(shape, layout):
    _check_shape(*shape, layout=layout)


def test_without_bias():
    _check_shape(2, 9, 11, 6, 7, bias=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_data_computes_in_float32(dtype):
    """16-bit x and weight: converted to float32 on the way in, the result rounded once to x's dtype."""
    x = torch.randn(1, 12, 9, 10).to(dtype)
    w = torch.randn(20, 12, 3, 3).to(dtype)
    b = torch.randn(20).to(dtype)
    got = OP(x, w, b)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    ulp = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
    assert ((got.double() - ref).abs() <= ulp * ref.abs() + 1e-4 * ref.abs().max()).all()


def test_public_function_matches_reference_backend():
    x, w, b = torch.randn(2, 5, 8, 8), torch.randn(6, 5, 3, 3), torch.randn(6)
    fused, ref = O.conv3x3(x, w, b), O.conv3x3(x, w, b, backend="reference")
    assert fused.is_contiguous(memory_format=torch.channels_last) and ref.is_contiguous(memory_format=torch.channels_last)
    err, bound = _bound(fused, x, w, b)
    assert err <= bound
    assert O.conv3x3(x.double(), w.double(), b.double()).dtype == torch.float64   # float64: the reference


# --- the cached transformed weights ----------------------------------------------------------------

def test_weight_updated_in_place_is_seen():
    x = torch.randn(1, 16, 8, 8)
    w = torch.randn(16, 16, 3, 3)
    OP(x, w, None)                            # caches U for w
    w.mul_(-2.0)                              # in place: same address, new values
    err, bound = _bound(OP(x, w, None), x, w, None)
    assert err <= bound


def test_weight_written_through_data_is_seen():
    """A write through ``.data`` bumps no version counter (samplers/compiled.py): the cache
    compares values, so it is seen as well."""
    x = torch.randn(1, 16, 8, 8)
    p = torch.nn.Parameter(torch.randn(16, 16, 3, 3))
    with torch.no_grad():
        OP(x, p, None)
        p.data.copy_(torch.randn(16, 16, 3, 3))
        err, bound = _bound(OP(x, p, None), x, p.detach(), None)
    assert err <= bound


def test_new_weight_at_a_reused_address_is_seen():
    x = torch.randn(1, 8, 6, 6)
    for seed in range(4):   # freed and reallocated: the allocator may hand back the same address
        w = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(seed))
        err, bound = _bound(OP(x, w, None), x, w, None)
        assert err <= bound
        del w


def test_one_weight_in_two_layouts():
    """The cache key holds the strides: the same storage seen transposed is another filter."""
    x = torch.randn(1, 8, 5, 5)
    w = torch.randn(8, 8, 3, 3)
    OP(x, w, None)
    wt = w.transpose(0, 1)
    err, bound = _bound(OP(x, wt, None), x, wt, None)
    assert err <= bound


# --- NaN, threads -----------------------------------------------------------------------------------

def test_nan_stays_within_its_tiles():
    """A NaN input pixel makes NaN every output a direct convolution would (its 3x3 neighbourhood)
    plus the rest of those outputs' 2x2 tiles, and nothing else."""
    x = torch.randn(1, 4, 8, 8)
    x[0, 2, 3, 4] = float("nan")
    got = OP(x, torch.randn(5, 4, 3, 3), torch.randn(5))
    direct = torch.zeros(8, 8, dtype=torch.bool)
    direct[2:5, 3:6] = True
    tiles = torch.zeros(8, 8, dtype=torch.bool)
    tiles[2:6, 2:6] = True        # the 2x2 tiles (rows 2-5, columns 2-5) those outputs fall in
    nan = got[0].isnan()
    assert nan.all(dim=0).eq(nan.any(dim=0)).all()        # every output channel alike
    assert (nan[0] >= direct).all() and (nan[0] <= tiles).all()


def test_threads_change_no_bit():
    x, w, b = torch.randn(3, 24, 20, 18), torch.randn(40, 24, 3, 3), torch.randn(40)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = OP(x, w, b)
        torch.set_num_threads(2)
        two = OP(x, w, b)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, two)


# --- each instruction-set path ------------------------------------------------------------------------

def _check_this_process() -> str:
    """The shape checks on this process's path (the scalar one runs ATen's convolution)."""
    for shape in SHAPES[:7]:
        _check_shape(*shape, layout="channels_last")
        _check_shape(*shape, layout="sliced", bias=False)
    return torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("path", isa_paths())
def test_every_isa_path(path):
    check_on_isa_path("tests.test_conv3x3", path)


# --- bad inputs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,match", [
    ((torch.randn(1, 4, 5), torch.randn(2, 4, 3, 3), None), r"x must be \[N, C, H, W\]"),
    ((torch.randn(1, 4, 5, 5), torch.randn(2, 3, 3, 3), None), r"weight must be \[K, C, 3, 3\] with C = 4"),
    ((torch.randn(1, 4, 5, 5), torch.randn(2, 4, 5, 5), None), r"weight must be \[K, C, 3, 3\]"),
    ((torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3, 3), torch.randn(3)), r"bias must be \[K\] with K = 2"),
])
def test_bad_shapes_fail_with_the_op_message(args, match):
    with pytest.raises(RuntimeError, match=match):
        OP(*args)
    with pytest.raises(ValueError, match=match):
        O.conv3x3(*args)


def test_integer_data_fails():
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16"):
        OP(torch.ones(1, 2, 3, 3, dtype=torch.int32), torch.randn(2, 2, 3, 3), None)
    with pytest.raises(TypeError, match="x must be float32"):
        O.conv3x3(torch.ones(1, 2, 3, 3, dtype=torch.int32), torch.randn(2, 2, 3, 3))


def test_empty_sizes():
    assert OP(torch.randn(0, 4, 5, 5), torch.randn(2, 4, 3, 3), None).shape == (0, 2, 5, 5)
    assert OP(torch.randn(1, 4, 0, 5), torch.randn(2, 4, 3, 3), None).shape == (1, 2, 0, 5)
    b = torch.randn(3)   # no input channel: every output is the bias
    got = OP(torch.randn(2, 0, 4, 4), torch.randn(3, 0, 3, 3), b)
    assert torch.equal(got, b.view(1, 3, 1, 1).expand(2, 3, 4, 4))
