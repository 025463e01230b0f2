"""The CPU kernels' noise (csrc/cpu/philox_simd.cpp) on every instruction-set path this machine can
run (ATEN_CPU_CAPABILITY selects it, each in a fresh process): uniforms bitwise the reference's,
normals within the bound of docs/ops_contract.md (Noise: 2 ulp; in fact < 0.94 ulp on the SIMD
paths, float32 lanes with float-float intermediates and one rounding per normal, and 0.5 ulp + 2^-20
on the scalar path, a float32 rounding of the double Box–Muller) over 2**20 consecutive counters,
measured against the contract's formulas evaluated in float64 on the same float32 u_a and
θ = float32(2π u_b), the words coming from the reference generator (ddpm_fast/noise.py)."""
from __future__ import annotations

import pytest
import torch

from ddpm_fast import noise
from ddpm_fast.ops import extension
from isa_paths import check_on_isa_path, isa_paths

pytestmark = [pytest.mark.extension,
              pytest.mark.skipif(not extension.available(), reason="C++ extension not built")]

NQ = 2 ** 20        # consecutive counters checked per path
SEED, T, OFFSET, STREAM = -(2 ** 40) - 12345, 977, 2 ** 32 - 3, 1
# the contract's 2 ulp, met with room (tests/test_box_muller_math.py derives the SIMD bound)
MAX_ULP = {"DEFAULT": 0.5 + 2.0 ** -20, "AVX2": 0.94, "AVX512": 0.94}   # per ATen capability


def _ulp_errors(z: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """|z - exact| in units of the float32 spacing at |exact|, exact = the float64 Box–Muller."""
    u = noise.uniform_from_words(words).view(-1, 2, 2)       # [counter, pair, (a, b)], exact float32
    r = torch.sqrt(-2.0 * torch.log(u[..., 0].double()))
    theta = (u[..., 1] * noise.TWO_PI_F32).double()         # the float32 angle, as the kernels form it
    exact = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1).flatten()
    mag = exact.float().abs()
    ulp = (torch.nextafter(mag, torch.tensor(float("inf"))) - mag).double()
    return (z.double().flatten() - exact).abs() / ulp


def _check_this_process() -> str:
    """Runs the checks in this process; returns the capability the kernels dispatched on."""
    ops = torch.ops.ddpm_fast
    seed = torch.tensor(SEED, dtype=torch.int64)
    t = torch.tensor(T, dtype=torch.int64)
    words = noise.philox_words(SEED, 4 * NQ, 1, T, OFFSET, STREAM)
    u = ops.philox_uniform(seed, t, 1, 4 * NQ, OFFSET, STREAM)
    assert torch.equal(u, noise.uniform_from_words(words)), "uniforms differ from the reference"
    z = ops.philox_normal(seed, t, 1, 4 * NQ, OFFSET, STREAM)
    err = _ulp_errors(z, words)
    worst = err.max().item()
    bound = MAX_ULP.get(torch.backends.cpu.get_cpu_capability(), 0.94)
    assert worst <= bound, f"normals {worst:.3f} ulp from the float64 Box–Muller (bound {bound})"
    # an element's value does not depend on how many elements were drawn (every counter takes
    # the same code path, the last vector only partly stored)
    for numel in (1, 7, 37, 4099):
        assert torch.equal(ops.philox_normal(seed, t, 1, numel, OFFSET, STREAM)[0], z[0, :numel])
    return torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("path", isa_paths())
def test_noise_on_each_isa_path(path):
    check_on_isa_path("tests.test_cpu_noise", path)


def test_error_measure_flags_a_wrong_normal():
    """The ulp measure itself: the float64 value rounded to float32 is within 0.5 ulp, one float
    step away is past 0.5, two steps past 1.5, a wrong sign far off."""
    words = noise.philox_words(3, 4 * 256, 1, 5)
    u = noise.uniform_from_words(words).view(-1, 2, 2)
    r = torch.sqrt(-2.0 * torch.log(u[..., 0].double()))
    theta = (u[..., 1] * noise.TWO_PI_F32).double()
    rounded = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1).flatten().float()
    assert _ulp_errors(rounded, words).max() <= 0.5
    inf = torch.tensor(float("inf"))
    one = torch.nextafter(rounded, inf)
    two = torch.nextafter(one, inf)
    assert (_ulp_errors(one, words) > 0.5).all()
    assert (_ulp_errors(two, words) > 1.5).all()
    assert (_ulp_errors(-rounded, words)[rounded.abs() > 1e-3] > 1e3).all()
