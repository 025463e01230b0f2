"""ddpm_fast's CPU attention (``ddpm_fast.ops.attention``, csrc/cpu/attention.cpp) against softmax
from its definition in float64, and its routing into the compiled sampler
(ddpm_fast/samplers/attention_pass.py). The op's contract cases (every backend, dtypes, opcheck)
are in tests/test_ops_contract.py; here: sizes around the kernel's 16-key vectors and 8-wide
output blocks, every SIMD path, layouts, large logits, non-finite input, bad input.

Tolerance (tests/test_ops_contract.py's rule): the kernel's largest error against float64 is at
most twice the reference backend's at the same precision, or 1e-6 x the largest |v| (float32).
"""
from __future__ import annotations

import pytest
import torch

import ddpm_fast
import ddpm_fast.ops as O
from ddpm_fast.ops import dispatch, reference
from isa_paths import check_on_isa_path, isa_paths

pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("cpp", "cpu") is not None,
                                reason="the C++ extension is not built")


def closed_form(q, k, v, scale):
    """softmax(q k^T scale) v in float64, the softmax written out: exp(s - max) / sum."""
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return (e / e.sum(-1, keepdim=True)) @ v.double()


def check(q, k, v, scale=None):
    """ours (cpp) against the closed form, within twice the float32 reference's own error."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    ours = O.attention(q, k, v, scale=scale, backend="cpp")
    assert ours.dtype == q.dtype and ours.shape == (*q.shape[:3], v.shape[3])
    exact = closed_form(q, k, v, scale)
    ref = reference.attention(q, k, v, scale)
    floor = {torch.float32: 1e-6, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[q.dtype]
    err = (ours.double() - exact).abs().max().item() if ours.numel() else 0.0
    err_ref = (ref.double() - exact).abs().max().item() if ours.numel() else 0.0
    bound = max(2 * err_ref, floor * max(v.abs().max().item() if v.numel() else 0.0, 1e-30))
    assert err <= bound, f"error {err:.3g} > {bound:.3g} (reference's own {err_ref:.3g})"
    return ours


@pytest.mark.parametrize("D", [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64])
def test_head_dims_1_to_64(D):
    """Every output block (8 at a time, then a 1..7 tail) and any number of score FMAs."""
    torch.manual_seed(D)
    check(torch.randn(2, 3, 21, D), torch.randn(2, 3, 35, D), torch.randn(2, 3, 35, D))


@pytest.mark.parametrize("Nq,Nk", [(1, 1), (3, 15), (17, 16), (16, 17), (5, 63), (64, 64), (65, 129), (200, 33)])
def test_sequence_lengths_around_the_key_vectors(Nq, Nk):
    """Nk below, at and past multiples of 16 (padded keys must weigh nothing; 64-key passes and
    their tail), Nq != Nk, Nq past one 64-row task."""
    torch.manual_seed(Nq * 1000 + Nk)
    check(torch.randn(1, 2, Nq, 8), torch.randn(1, 2, Nk, 8), torch.randn(1, 2, Nk, 8))


def test_diffusers_layout_and_flash_layout_out():
    """q, k, v as diffusers makes them (views of [B, N, H*D]); the output has ATen's CPU flash
    layout ([B, H, N, D] over a [B, N, H, D] buffer), which the compiled graph's views expect."""
    B, H, N, D = 2, 8, 256, 8
    q, k, v = (torch.randn(B, N, H * D).view(B, N, H, D).transpose(1, 2) for _ in range(3))
    out = check(q, k, v)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
    assert out.stride() == flash.stride() == (N * H * D, D, H * D, 1)
    torch.testing.assert_close(out, flash, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_non_contiguous_inputs(layout):
    torch.manual_seed(1)
    if layout == "transposed":    # N and D swapped in memory
        q, k, v = (torch.randn(2, 3, 8, n).transpose(-1, -2) for n in (19, 40, 40))
    elif layout == "sliced":      # every other element of D
        q, k, v = (torch.randn(2, 3, n, 16)[..., ::2] for n in (19, 40, 40))
    else:                         # k, v broadcast over batch and heads (stride 0)
        q = torch.randn(2, 3, 19, 8)
        k, v = (torch.randn(1, 1, 40, 8).expand(2, 3, 40, 8) for _ in range(2))
    check(q, k, v)


def test_large_logits_need_the_max_subtraction():
    """Logits in the hundreds: exp without the row max would overflow to inf (NaN out)."""
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 50, 8) * 30, torch.randn(1, 2, 70, 8) * 30, torch.randn(1, 2, 70, 8)
    assert ((q @ k.transpose(-1, -2)) * 8 ** -0.5).abs().max() > 200
    out = check(q, k, v)
    assert out.isfinite().all()


def test_all_logits_equal_is_the_mean():
    """q = 0: every weight is 1/Nk exactly, the output is v's mean."""
    v = torch.randn(1, 1, 37, 8, dtype=torch.float64).float()
    out = O.attention(torch.zeros(1, 1, 3, 8), torch.randn(1, 1, 37, 8), v, backend="cpp")
    torch.testing.assert_close(out.double(), v.double().mean(2, keepdim=True).expand(1, 1, 3, 8),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs_math_in_float32(dtype):
    torch.manual_seed(3)
    check(*(torch.randn(2, 2, n, 8).to(dtype) for n in (33, 47, 47)))


def test_float64_goes_to_the_reference():
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64) for _ in range(3))
    assert torch.equal(O.attention(q, k, v, scale=0.3, backend="cpp"), reference.attention(q, k, v, 0.3))


def test_empty_sizes_follow_the_reference():
    """No keys: the empty softmax weighs nothing, out = 0 (the reference's p @ v); no queries: empty."""
    q, kv = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 0, 8)
    assert torch.equal(O.attention(q, kv, kv, backend="cpp"), reference.attention(q, kv, kv, 0.3))
    assert O.attention(torch.randn(1, 2, 0, 8), q, q, backend="cpp").shape == (1, 2, 0, 8)


def test_nan_in_nan_out_as_the_reference():
    """A NaN in q spoils its row; in k, every row of its head (its score is in every softmax); in v,
    its column of its head. Nothing else."""
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 2, n, 8) for n in (20, 33, 33))
    q[0, 0, 3, 1] = float("nan")
    k[0, 1, 30, 5] = float("nan")
    v[1, 0, 17, 2] = float("nan")
    ours = O.attention(q, k, v, backend="cpp")
    ref = reference.attention(q, k, v, 8 ** -0.5)
    assert torch.equal(ours.isnan(), ref.isnan())
    assert ours[0, 0, 3].isnan().all() and ours[0, 1].isnan().all() and ours[1, 0, :, 2].isnan().all()
    assert ours.isnan().sum() == 8 + 20 * 8 + 20   # the row, the head, the column: three heads
    finite = ~ref.isnan()
    torch.testing.assert_close(ours[finite], ref[finite], rtol=1e-5, atol=1e-6)


def test_inf_logits_as_the_reference():
    """+inf scores give NaN rows (inf - inf), as torch.softmax does; -inf keys weigh nothing."""
    q, k, v = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 20, 8), torch.randn(1, 1, 20, 8)
    k[0, 0, 7] = float("inf")
    ours = O.attention(q, k, v, backend="cpp")
    assert torch.equal(ours.isnan(), reference.attention(q, k, v, 8 ** -0.5).isnan())


BAD = [
    (lambda: O.attention(torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8)),
     ValueError, r"q must be \[B, H, N, D\]"),
    (lambda: O.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 6, 8)),
     ValueError, "k and v must be"),
    (lambda: O.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)),
     ValueError, "k and v must be"),
    (lambda: O.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)),
     ValueError, "k and v must be"),
    (lambda: O.attention(torch.ones(1, 2, 4, 8, dtype=torch.int32), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)),
     TypeError, "q must be float32, float16, bfloat16 or float64"),
    (lambda: O.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), scale=float("nan")),
     ValueError, "scale must be a finite number"),
    (lambda: O.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), scale=float("inf")),
     ValueError, "scale must be a finite number"),
]


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("i", range(len(BAD)))
def test_front_refuses_bad_input(backend, i):
    call, err, match = BAD[i]
    with ddpm_fast.use_backend(backend), pytest.raises(err, match=match):
        call()


@pytest.mark.parametrize("args,match", [
    ((torch.randn(1, 2, 4, 8, dtype=torch.float64),) * 3 + (0.3,), "q must be float32, float16 or bfloat16"),
    ((torch.randn(2, 4, 8),) * 3 + (0.3,), r"must be \[B, H, N, D\]"),
    ((torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 6, 8), 0.3), "k and v must be"),
    ((torch.randn(1, 2, 4, 8),) * 3 + (float("inf"),), "scale must be a finite number"),
])
def test_kernel_refuses_bad_input(args, match):
    """Direct calls of torch.ops.ddpm_fast.attention (no front) get the same rules (op_checks.h)."""
    with pytest.raises(RuntimeError, match=match):
        torch.ops.ddpm_fast.attention(*args)


def _check_softmax_weights() -> None:
    """The kernel's exp through the softmax of two keys, scores (0, x): the second weight is
    sigmoid(x), compared with float64 over x in [-86.6, 0] (every float32 x of a fine grid). The
    documented accuracy (docs/ops_contract.md, attention): absolute <= 4.7e-8 against the largest
    weight, ~1e-6 relative above e^-16 (checked with 25% headroom), weights below 2^-125 exactly 0
    or (AVX-512) their subnormal rounding, never more than 2^-125."""
    x = -torch.linspace(0, 86.6, 400_001, dtype=torch.float64).float()
    k = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)
    out = O.attention(x.view(1, 1, -1, 1), k, k, scale=1.0, backend="cpp").double().flatten()
    ref = torch.sigmoid(x.double())
    err = (out - ref).abs()
    assert err.max() <= 6e-8, f"absolute error {err.max():.3g}"
    big = x > -16
    assert (err[big] / ref[big]).max() <= 1.25e-6, f"relative error {(err[big] / ref[big]).max():.3g}"
    tiny = ref < 2.0 ** -126
    assert (out[tiny] <= 2.0 ** -125).all()


def _check_this_process() -> str:
    """The checks of every path on whichever path this process runs (tests/isa_paths.py)."""
    _check_softmax_weights()
    torch.manual_seed(0)
    for D in (3, 8, 17):
        for Nq, Nk in ((5, 16), (19, 37), (64, 100)):
            check(*(torch.randn(2, 2, n, D) for n in (Nq, Nk, Nk)))
    q, k, v = torch.randn(1, 1, 9, 8), torch.randn(1, 1, 21, 8), torch.randn(1, 1, 21, 8)
    k[0, 0, 4, 1] = float("nan")
    assert O.attention(q, k, v, backend="cpp").isnan().all()
    return torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("path", isa_paths())
def test_on_each_isa_path(path):
    """The scalar, AVX2 and AVX-512 paths (ATEN_CPU_CAPABILITY picks one per process, as for
    philox_simd.cpp) meet the same bound, each in a fresh process."""
    check_on_isa_path("tests.test_small_head_attention", path)
