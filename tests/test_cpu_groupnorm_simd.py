"""The CPU GroupNorm kernel's SIMD loops (csrc/cpu/groupnorm_simd.cpp) on every instruction-set path
this machine can run (ATEN_CPU_CAPABILITY selects it, each in a fresh process), against float64:

* SiLU alone, over a dense sweep of [-130, 130] and special values: with weight 0 and eps > 0 a
  group's output is silu(bias_c) exactly computed from bias_c, so the bias carries the test values.
  Within 3 ulp of the float64 silu wherever it is above 1e-30 in magnitude (torch's own float32
  silu: 2.1 ulp on the same sweep), and -0 / NaN / inf where torch gives them.
* The whole op on groups that end mid-vector, span many float32-lane flushes (the moments are
  summed in float32 lanes over 512-element chunks, then in double), sit far from zero, carry temb
  before or after the norm, and come in float16 / bfloat16 (the blocked path): within the op
  contract's bound (tests/test_ops_contract.py: 1e-6 of the largest magnitude for float32)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from ddpm_fast.ops import extension
from isa_paths import check_on_isa_path, isa_paths

pytestmark = [pytest.mark.extension,
              pytest.mark.skipif(not extension.available(), reason="C++ extension not built")]

SILU_MAX_ULP = 3.0
FLOOR = {torch.float32: 1e-6, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
# (B, C, HW, groups, temb mode, silu, loc, spread, dtype)
CASES = [
    (3, 6, 1, 3, 0, True, 0.0, 1.0, torch.float32),         # one value per channel: all tail
    (2, 8, 5, 4, 1, True, 0.0, 1.0, torch.float32),         # before-norm temb, 5-value channels
    (2, 12, 17, 3, 2, True, 0.0, 2.0, torch.float32),       # one vector + 1 per channel
    (1, 4, 63, 2, 1, False, 0.0, 1.0, torch.float32),
    (2, 4, 1000, 1, 0, True, 0.0, 1.0, torch.float32),      # 4000-value groups: 8 flushes
    (1, 2, 9216, 1, 2, True, 1000.0, 1.0, torch.float32),   # far from zero (the pivot's job)
    (1, 3, 4099, 3, 1, True, -50.0, 0.01, torch.float32),   # before-norm temb, tiny spread
    (40, 32, 16, 8, 1, True, 0.0, 1.0, torch.float32),      # the demo UNet's 4x4 level
    (2, 6, 37, 3, 1, True, 0.0, 1.0, torch.float16),
    (2, 6, 2100, 2, 2, True, 3.0, 1.0, torch.bfloat16),     # more than one 2048-value block per channel
]


def _silu_errors() -> None:
    op = torch.ops.ddpm_fast.groupnorm_temb_silu
    g = torch.Generator().manual_seed(0)
    vals = torch.cat([torch.linspace(-130, 130, 200001), torch.randn(50000, generator=g) * 3,
                      (torch.rand(50000, generator=g) - 0.5) * 1e-3])
    n = vals.numel()
    out = op(torch.zeros(1, n, 17), torch.zeros(n), vals, None, n, 1e-6, 0, True)[0]
    assert torch.equal(out, out[:, :1].expand_as(out)), "a channel's values differ (vector vs tail lanes)"
    got, v = out[:, 0].double(), vals.double()
    want = v / (1 + torch.exp(-v))
    mag = want.float().abs()
    ulp = (torch.nextafter(mag, torch.tensor(float("inf"))) - mag).double()
    big = want.abs() > 1e-30
    worst = ((got - want).abs() / ulp)[big].max().item()
    assert worst <= SILU_MAX_ULP, f"silu {worst:.2f} ulp from float64"
    assert (got - want)[~big].abs().max().item() < 1e-35
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 89.0, -89.0, 1e30, -1e30, 1e-40])
    k = special.numel()
    got = op(torch.zeros(1, k, 3), torch.zeros(k), special, None, k, 1e-6, 0, True)[0, :, 0]
    torch.testing.assert_close(got, torch.nn.functional.silu(special), equal_nan=True, rtol=1e-6, atol=0)


def _closed_form_errors() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from groupnorm_closed_form import closed_form
    g = torch.Generator().manual_seed(1)
    for B, C, HW, G, mode, silu, loc, spread, dt in CASES:
        x = (loc + spread * torch.randn(B, C, HW, generator=g)).to(dt)
        w, b = torch.randn(C, generator=g).to(dt), torch.randn(C, generator=g).to(dt)
        temb = torch.randn(B, C, generator=g).to(dt) if mode else None
        got = torch.ops.ddpm_fast.groupnorm_temb_silu(x, w, b, temb, G, 1e-5, mode, silu)
        want = closed_form(x, w, b, temb if mode else torch.zeros(B, C), G, 1e-5, mode, silu)
        scale = max(want.abs().max().item(), x.abs().max().item())
        err = (got.double() - want).abs().max().item()
        assert err <= FLOOR[dt] * scale, f"{(B, C, HW, G, mode, silu, loc, dt)}: error {err:.3g}"


def _check_this_process() -> str:
    _silu_errors()
    _closed_form_errors()
    return torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("path", isa_paths())
def test_groupnorm_on_each_isa_path(path):
    check_on_isa_path("tests.test_cpu_groupnorm_simd", path)


def test_the_checks_catch_a_wrong_silu(monkeypatch):
    """The silu check fails on a kernel 4 ulp worse: the op with its output nudged by 4 ulp."""
    real = torch.ops.ddpm_fast.groupnorm_temb_silu

    class Nudged:
        @staticmethod
        def groupnorm_temb_silu(x, w, b, temb, G, eps, mode, silu):
            y = real(x, w, b, temb, G, eps, mode, silu)
            for _ in range(4):
                y = torch.nextafter(y, torch.full_like(y, float("inf")))
            return y

    monkeypatch.setattr(torch.ops, "ddpm_fast", Nudged)
    with pytest.raises(AssertionError, match="ulp"):
        _silu_errors()
