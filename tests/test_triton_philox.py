"""Triton in-kernel Philox: Random123 known answers, and the same words/uniforms/normals as the
reference generator (ddpm_fast.noise) for every counter field, on CPU through TRITON_INTERPRET=1."""
from pathlib import Path

import pytest
import torch

from ddpm_fast import noise

pytestmark = pytest.mark.triton

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from triton_env import DEV, triton_ops_or_skip  # noqa: E402

ops = triton_ops_or_skip()

from ddpm_fast.ops.triton.philox import philox_words, sincos_0_2pi  # noqa: E402
KAT = Path(__file__).parent / "data" / "philox4x32_10_kat.txt"


@triton.jit
def _words_kernel(out_ptr, seed_ptr, c0, c1, c2, c3):
    q = tl.zeros((4,), dtype=tl.int64) + c0
    w0, w1, w2, w3 = philox_words(tl.load(seed_ptr), q, c1, c2, c3)
    i = tl.arange(0, 4)
    w = tl.where(i == 0, w0, tl.where(i == 1, w1, tl.where(i == 2, w2, w3)))
    tl.store(out_ptr + i, w.to(tl.int64))


@triton.jit
def _sincos_kernel(th_ptr, cos_ptr, sin_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    c, s = sincos_0_2pi(tl.load(th_ptr + offs))
    tl.store(cos_ptr + offs, c)
    tl.store(sin_ptr + offs, s)


def test_sincos_every_box_muller_angle():
    """The kernels' cos/sin (own range reduction + polynomials, no libdevice slow path) at every
    angle θ = float32(u * 2π) the stream can produce (all 2**23 uniforms): within 1.6 ulp /
    1e-7 absolute of the exact values, i.e. of torch's float32 cos/sin up to float rounding."""
    u = (torch.arange(2 ** 23, dtype=torch.float32, device=DEV) + 0.5) * 2.0 ** -23
    th = u * noise.TWO_PI_F32
    c, s = torch.empty_like(th), torch.empty_like(th)
    block = 2 ** 18
    _sincos_kernel[(th.numel() // block,)](th, c, s, BLOCK=block)
    td = th.double()
    for got, exact in ((c, torch.cos(td)), (s, torch.sin(td))):
        err = (got.double() - exact).abs()
        assert err.max().item() < 1e-7
        ulp = (exact.float().abs().nextafter(torch.tensor(float("inf"), device=DEV)) - exact.float().abs()).double()
        assert (err / ulp).max().item() < 1.6


def _kat_rows():
    rows = []
    for line in KAT.read_text().splitlines():
        if line.startswith("philox4x32"):
            f = line.split()
            rows.append(([int(x, 16) for x in f[2:6]], [int(x, 16) for x in f[6:8]],
                         [int(x, 16) for x in f[8:12]]))
    return rows


@pytest.mark.parametrize("ctr,key,expected", _kat_rows())
def test_kernel_words_match_random123_kat(ctr, key, expected):
    seed = torch.tensor(noise.seed_to_int64((key[1] << 32) | key[0]), dtype=torch.int64, device=DEV)
    out = torch.empty(4, dtype=torch.int64, device=DEV)
    _words_kernel[(1,)](out, seed, *ctr)
    got = [int(v) & 0xFFFFFFFF for v in out.cpu()]
    assert got == expected


@pytest.mark.parametrize("seed,stream", [(0, 0), (1234, 1), (2 ** 64 - 1, 2), (-(2 ** 63), 2 ** 32 - 1),
                                         (0x0123456789ABCDEF, 1)])
def test_uniform_bitwise_and_normal_close(seed, stream):
    s = torch.tensor(noise.seed_to_int64(seed), dtype=torch.int64, device=DEV)
    t = torch.tensor([0, 7, 999], dtype=torch.int64, device=DEV)
    offset = 2 ** 32 - 3   # the last offset whose 3 samples stay below 2**32 (docs/ops_contract.md)
    u = ops.philox_uniform(s, t, 3, 37, offset, stream)
    u_ref = noise.philox_uniform(s, (3, 37), t, offset, stream, device=DEV)
    assert torch.equal(u, u_ref)
    z = ops.philox_normal(s, t, 3, 37, offset, stream)
    z_ref = noise.philox_normal(s, (3, 37), t, offset, stream, device=DEV)
    torch.testing.assert_close(z, z_ref, rtol=2e-6, atol=2e-6)


def test_scalar_timestep_and_empty():
    s = torch.tensor(5, dtype=torch.int64, device=DEV)
    t = torch.tensor(3, dtype=torch.int32, device=DEV)
    assert torch.equal(ops.philox_uniform(s, t, 2, 9, 0, 1),
                       noise.philox_uniform(s, (2, 9), t, 0, 1, device=DEV))
    assert ops.philox_normal(s, t, 0, 9, 0, 1).shape == (0, 9)
    assert ops.philox_normal(s, t, 2, 0, 0, 1).shape == (2, 0)


def test_chunk_invariance():
    s = torch.tensor(99, dtype=torch.int64, device=DEV)
    t = torch.tensor([4, 5, 6, 7], dtype=torch.int64, device=DEV)
    full = ops.philox_normal(s, t, 4, 21, 10, 1)
    parts = [ops.philox_normal(s, t[i:i + 2], 2, 21, 10 + i, 1) for i in (0, 2)]
    assert torch.equal(full, torch.cat(parts))


def test_dispatcher_randn_rand_match_reference():
    import ddpm_fast.ops as O
    a = O.randn((2, 3, 5), 7, timestep=4, sample_offset=3, stream=0, device=DEV, backend="triton")
    b = O.randn((2, 3, 5), 7, timestep=4, sample_offset=3, stream=0, device=DEV, backend="reference")
    torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)
    assert torch.equal(O.rand((2, 11), 7, device=DEV, backend="triton"),
                       O.rand((2, 11), 7, device=DEV, backend="reference"))


def test_bad_inputs():
    """The front validates for every backend (tests/test_ops_contract.py), Triton included."""
    import ddpm_fast.ops as O
    s = torch.tensor(5, dtype=torch.int64, device=DEV)
    with pytest.raises(TypeError, match="seed"):
        O.randn((2, 4), s.int(), backend="triton")
    with pytest.raises(ValueError, match="shape"):
        O.randn((2, 4), s, timestep=torch.tensor([1, 2, 3], device=DEV), backend="triton")
    with pytest.raises(TypeError, match="int32 or int64"):
        O.randn((2, 4), s, timestep=torch.tensor(3.0, device=DEV), backend="triton")
    with pytest.raises(ValueError, match=r"out of range \[0, 4294967296\)"):
        O.randn((2, 4), s, timestep=2 ** 32, backend="triton")
