"""The reference Philox4x32-10 generator: known answers, layout invariances, statistics."""
import pathlib

import pytest
import torch

from ddpm_fast import ops
from ddpm_fast.noise import (normal_from_words, philox4x32_10, philox_normal, philox_uniform,
                             philox_words, seed_to_int64, split_seed, uniform_from_words)

KAT = pathlib.Path(__file__).parent / "data" / "philox4x32_10_kat.txt"


def kat_vectors():
    rows = []
    for line in KAT.read_text().splitlines():
        if line.startswith("philox4x32"):
            v = [int(x, 16) for x in line.split()[2:]]
            rows.append((v[:4], v[4:6], v[6:]))
    assert len(rows) == 3
    return rows


@pytest.mark.parametrize("ctr,key,expected", kat_vectors())
def test_random123_known_answers(ctr, key, expected):
    out = philox4x32_10(*ctr, *key)
    assert [int(o) for o in out] == expected


def test_known_answers_vectorised():
    """The same vectors computed in one batched call (broadcasting paths)."""
    rows = kat_vectors()
    c = torch.tensor([r[0] for r in rows]).T
    k = torch.tensor([r[1] for r in rows]).T
    out = torch.stack(philox4x32_10(*c, *k), dim=1)
    assert out.tolist() == [r[2] for r in rows]


def test_seed_split_and_64bit_range():
    assert seed_to_int64(2 ** 64 - 1) == -1
    k0, k1 = split_seed(0x0123456789ABCDEF)
    assert (int(k0), int(k1)) == (0x89ABCDEF, 0x01234567)
    k0, k1 = split_seed(2 ** 64 - 1)
    assert (int(k0), int(k1)) == (0xFFFFFFFF, 0xFFFFFFFF)
    with pytest.raises(ValueError):
        seed_to_int64(2 ** 64)
    with pytest.raises(TypeError):
        seed_to_int64(1.5)


def test_counter_layout_element_sample_timestep_stream():
    """Element e of sample n at timestep t is word e%4 of counter (e//4, n, t, stream)."""
    seed = 0xDEADBEEF12345678
    w = philox_words(seed, numel=10, batch=3, timestep=7, sample_offset=5, stream=1)
    k0, k1 = split_seed(seed)
    for b in range(3):
        for e in range(10):
            words = philox4x32_10(e // 4, 5 + b, 7, 1, k0, k1)
            assert int(w[b, e]) == int(words[e % 4])


def test_uniforms_exact_open_interval():
    w = torch.tensor([0, 2 ** 32 - 1, 511, 512], dtype=torch.int64)
    u = uniform_from_words(w)
    assert u.dtype == torch.float32
    assert u[0].item() == 2.0 ** -24 and u[1].item() == 1 - 2.0 ** -24
    assert u[2].item() == u[0].item() and u[3].item() == 3 * 2.0 ** -24


def test_box_muller_pairs():
    w = torch.randint(0, 2 ** 32, (8,), dtype=torch.int64)
    z = normal_from_words(w)
    u = uniform_from_words(w).double()
    r = torch.sqrt(-2 * torch.log(u[0::2]))
    th = 2 * torch.pi * u[1::2]
    torch.testing.assert_close(z[0::2].double(), r * torch.cos(th), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z[1::2].double(), r * torch.sin(th), rtol=1e-5, atol=1e-5)


def test_batch_split_invariance():
    full = philox_normal(42, (7, 3, 5, 5), timestep=3)
    for start, n in [(0, 1), (3, 2), (6, 1), (1, 6)]:
        part = philox_normal(42, (n, 3, 5, 5), timestep=3, sample_offset=start)
        assert torch.equal(part, full[start:start + n])


def test_per_sample_timesteps():
    t = torch.tensor([3, 9])
    both = philox_normal(1, (2, 6), timestep=t)
    assert torch.equal(both[0], philox_normal(1, (1, 6), timestep=3)[0])
    assert torch.equal(both[1], philox_normal(1, (1, 6), timestep=9, sample_offset=1)[0])


def test_different_keys_timesteps_streams_differ():
    base = philox_uniform(1, (2, 64), timestep=5, stream=1)
    for kw in [dict(seed=2), dict(timestep=6), dict(stream=2), dict(sample_offset=2)]:
        args = dict(seed=1, timestep=5, stream=1, sample_offset=0) | kw
        other = philox_uniform(args.pop("seed"), (2, 64), **args)
        assert not torch.equal(base, other)


def test_normal_statistics_and_independence():
    z = philox_normal(123, (64, 4096), timestep=11).double()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / n ** 0.5
    assert abs(z.var().item() - 1) < 5 * (2 / n) ** 0.5
    assert abs(((z ** 4).mean() - 3).item()) < 0.05  # Gaussian kurtosis
    # neighbours (same counter pair, adjacent counters), samples and timesteps uncorrelated
    def corr(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return (a @ b / (a.norm() * b.norm())).item()
    assert abs(corr(z[:, 0::2], z[:, 1::2])) < 0.01
    assert abs(corr(z[:, :-4], z[:, 4:])) < 0.01
    assert abs(corr(z[:-1], z[1:])) < 0.01
    z2 = philox_normal(123, (64, 4096), timestep=12).double()
    assert abs(corr(z, z2)) < 0.01


def test_uniform_statistics():
    u = philox_uniform(9, (16, 8192)).double()
    hist = torch.histc(u, bins=16, min=0, max=1)
    expected = u.numel() / 16
    chi2 = (((hist - expected) ** 2) / expected).sum().item()
    assert chi2 < 45  # chi-square, 15 dof: p ~ 1e-4


def test_ops_front_randn_matches_reference():
    z = ops.randn((3, 2, 4), seed=7, timestep=2, sample_offset=1, stream=0, backend="reference")
    assert torch.equal(z, philox_normal(7, (3, 2, 4), 2, 1, 0))
    with pytest.raises(ValueError):
        ops.randn((3, -1), seed=1)
