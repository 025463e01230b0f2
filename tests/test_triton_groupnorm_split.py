"""The Triton groupnorm_temb_silu split path (groups larger than one program's block: rectangles of
channels x positions over B * G * S programs, partial statistics merged in a second launch)
against the float64 closed form, at odd sizes, non-contiguous inputs, every dtype and temb mode.
On CPU through TRITON_INTERPRET=1."""
import pytest
import torch

from ddpm_fast.ops.triton import groupnorm_temb_silu as gn

pytestmark = pytest.mark.triton

from groupnorm_closed_form import closed_form  # noqa: E402
from triton_env import DEV, triton_ops_or_skip  # noqa: E402

triton_ops_or_skip()

TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 4e-3),
       torch.bfloat16: (1e-2, 3e-2)}


# (B, C, spatial, G): rectangles split over channels, over positions, both; partial tiles
SHAPES = [((1, 4, (100, 93), 2), "positions"), ((2, 96, (13, 11), 1), "channels"),
          ((1, 16, (50, 45), 1), "both"), ((3, 6, (97, 61), 3), "positions")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", range(len(SHAPES)))
def test_split_path_matches_closed_form(dtype, case):
    (B, C, spatial, G), split = SHAPES[case]
    mode, silu = case % 3, case % 2 == 0
    cpg, hw = C // G, spatial[0] * spatial[1]
    assert gn.pick_config(cpg * hw) is None
    sp = gn.pick_split(B, G, cpg, hw)
    sc = sp["S"] // sp["SH"]
    assert {"positions": sp["SH"] > 1 and sc == 1, "channels": sc > 1 and sp["SH"] == 1,
            "both": sc > 1 and sp["SH"] > 1}[split], sp
    g = torch.Generator().manual_seed(case)
    # non-contiguous x: a transposed view of an offset, scaled map (mean far from 0)
    x = (torch.randn(B, C, spatial[1], spatial[0], generator=g, dtype=torch.float64) * 2 + 7).to(dtype)
    x = x.transpose(2, 3)
    w = (torch.rand(2 * C, generator=g, dtype=torch.float64) + 0.5).to(dtype)[::2]
    b = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    temb = torch.randn(B, C, generator=g, dtype=torch.float64).to(dtype)
    got = gn.groupnorm_temb_silu(x.to(DEV), w.to(DEV), b.to(DEV), temb.to(DEV), G, 1e-5, mode, silu)
    assert got.dtype == dtype and got.shape == x.shape
    want = closed_form(x, w, b, temb, G, 1e-5, mode, silu)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.cpu().double(), want, rtol=rtol, atol=atol)


def test_split_statistics_survive_a_large_offset():
    """Per-tile mean/M2 merged across programs: an offset of 1e4 over unit spread (E[x²] - E[x]²
    in float32 would lose every digit of the variance) still normalises to float32 accuracy."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 120, 90, generator=g, dtype=torch.float64) + 1e4
    w, b = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    got = gn.groupnorm_temb_silu(x.float().to(DEV), w.float().to(DEV), b.float().to(DEV), x.new_zeros(1, 2).float(),
                                 1, 1e-5, 0, False)
    want = closed_form(x.float(), w, b, None, 1, 1e-5, 0, False)
    torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=2e-3)


@pytest.mark.parametrize("B,G,cpg,hw", [(1, 1, 1, 3 * 10 ** 5), (1, 32, 512, 64), (64, 32, 8, 4096), (1, 2, 3, 10007)])
def test_split_plan_covers_each_group_once(B, G, cpg, hw):
    """Rectangles tile each group exactly: SC * CPS >= CPG > (SC - 1) * CPS, likewise positions,
    tile-aligned, and splitting happens only while B * G * S is under MIN_PROGRAMS."""
    sp = gn.pick_split(B, G, cpg, hw)
    sc, sh = sp["S"] // sp["SH"], sp["SH"]
    assert sc * sh == sp["S"]
    assert (sc - 1) * sp["CPS"] < cpg <= sc * sp["CPS"] and sp["CPS"] % sp["ROWS"] == 0
    assert (sh - 1) * sp["HPS"] < hw <= sh * sp["HPS"] and sp["HPS"] % sp["HWB"] == 0
    assert sp["ROWS"] * sp["HWB"] <= gn.TILE
    if B * G >= gn.MIN_PROGRAMS:
        assert sp["S"] == 1
