"""The compiled sampler's convolution routing (ddpm_fast/samplers/conv_pass.py): on CPU, Inductor's
post-grad pass (the one samplers/attention_pass.py adds) swaps ``aten.convolution`` for
``ddpm_fast::conv3x3`` where the filter is 3x3, stride 1, padding 1, one group, float32, and the
sizes are ones the Winograd kernel wins at.

The rewrite rules run on hand-built graphs (milliseconds); then two Inductor compiles: a module
with one eligible convolution among ineligible ones, and the compiled sampler on a small diffusers
UNet2DModel, whose samples must equal the eager sampler's within the compiled path's tolerance
(1e-4, tests/test_fast_sampler.py) while its graph runs the new kernel for every 3x3 convolution.
"""
from __future__ import annotations

import collections

import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule
from ddpm_fast.ops import dispatch
from ddpm_fast.samplers.attention_pass import PASS, with_attention_pass
from ddpm_fast.samplers.conv_pass import faster_than_aten, route_conv3x3
# the fixtures (a fresh sampler cache per test, one thread) and the small UNet2DModel of the attention pass's tests
from test_attention_pass import _fresh_cache, one_thread, tiny_diffusers_unet  # noqa: F401

pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("cpp", "cpu") is not None,
                                reason="the C++ extension is not built")

CONV = torch.ops.aten.convolution.default
OURS = torch.ops.ddpm_fast.conv3x3.default


# --- the rewrite, on hand-built post-grad graphs ----------------------------------------------------

def _graph(C=16, K=16, HW=8, kernel=3, stride=1, padding=1, dilation=1, transposed=False, groups=1,
           dtype=torch.float32, bias=True):
    """placeholders x, w (and b) -> aten.convolution -> output, with fake values as Inductor has."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    g = torch.fx.Graph()
    w_shape = (C, K // groups, kernel, kernel) if transposed else (K, C // groups, kernel, kernel)
    with FakeTensorMode():
        vals = [torch.empty(1, C, HW, HW, dtype=dtype), torch.empty(w_shape, dtype=dtype)]
        if bias:
            vals.append(torch.empty(K, dtype=dtype))
        nodes = []
        for name, val in zip("xwb", vals):
            node = g.placeholder(name)
            node.meta["val"] = val
            nodes.append(node)
        args = (*nodes[:2], nodes[2] if bias else None, [stride] * 2, [padding] * 2, [dilation] * 2, transposed,
                [0, 0], groups)
        conv = g.call_function(CONV, args)
        conv.meta["val"] = CONV(*vals[:2], vals[2] if bias else None, *args[3:])
    g.output((conv,))
    return g


def _targets(g):
    return collections.Counter(n.target for n in g.nodes if n.op == "call_function")


@pytest.mark.parametrize("bias", [True, False])
def test_rewrites_a_unet_convolution(bias):
    g = _graph(C=32, K=64, HW=16, bias=bias)
    assert route_conv3x3(g) == 1
    assert _targets(g) == {OURS: 1}
    (node,) = [n for n in g.nodes if n.target is OURS]
    assert (node.args[2] is None) == (not bias)
    val = node.meta["val"]
    assert val.shape == (1, 64, 16, 16) and val.is_contiguous(memory_format=torch.channels_last)  # the op's fake
    g.lint()


@pytest.mark.parametrize("why,kw", [
    ("stride 2", dict(stride=2)),
    ("padding 0", dict(padding=0)),
    ("dilation 2", dict(dilation=2, padding=2)),
    ("two groups", dict(groups=2)),
    ("transposed", dict(transposed=True)),
    ("5x5", dict(kernel=5, padding=1)),
    ("1x1", dict(kernel=1, padding=1)),
    ("float64", dict(dtype=torch.float64)),
    ("512 -> 512 at 8x8", dict(C=512, K=512, HW=8)),
])
def test_leaves_other_convolutions_alone(why, kw):
    g = _graph(**kw)
    assert route_conv3x3(g) == 0, why
    assert _targets(g)[CONV] == 1


def test_sizes_it_routes():
    """The measured rule (conv_pass.py): any size up to 128 x 128 filters, 256 x 256 from 16x16 up."""
    assert faster_than_aten(3, 32, 32, 32) and faster_than_aten(32, 3, 32, 32)
    assert faster_than_aten(128, 128, 4, 4)
    assert faster_than_aten(256, 256, 16, 16) and not faster_than_aten(256, 256, 8, 8)
    assert not faster_than_aten(512, 512, 32, 32)


def test_pass_key_covers_the_conv_rules():
    """The FX graph cache key (the pass's uuid) changes with any file of the rewrite."""
    from torch._inductor.custom_graph_pass import get_hash_for_files
    from ddpm_fast.samplers import attention_pass, conv_pass, fx_rewrite
    assert PASS.uuid() == get_hash_for_files((attention_pass.__file__, conv_pass.__file__, fx_rewrite.__file__))


# --- Inductor -----------------------------------------------------------------------------------------

class ThreeConvs(torch.nn.Module):
    """One convolution the pass takes (3x3, stride 1) between two it leaves (stride 2, 1x1)."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.conv = torch.nn.Conv2d(16, 24, 3, padding=1)
        self.proj = torch.nn.Conv2d(24, 8, 1)
        self.norm = torch.nn.GroupNorm(4, 24)

    def forward(self, x):
        return self.proj(torch.nn.functional.silu(self.norm(self.conv(self.down(x)))))


def _runs(fn):
    with torch.profiler.profile() as prof:
        out = fn()
    c = collections.Counter(e.name for e in prof.events())
    return out, c["ddpm_fast::conv3x3"]


@pytest.mark.slow
def test_inductor_runs_the_kernel_where_the_pass_takes_it(one_thread):
    x = torch.randn(2, 16, 18, 14)
    m = ThreeConvs().eval()
    with torch.no_grad():
        compiled = torch.compile(m, **with_attention_pass({"dynamic": False}, "cpu"))
        compiled(x)                                                   # compile
        got, ours = _runs(lambda: compiled(x))
        ref = m.double()(x.double())
    assert ours == 1
    assert (got.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@pytest.mark.slow
def test_compiled_sampler_runs_the_kernel_on_a_diffusers_unet(one_thread):
    pytest.importorskip("diffusers")
    m = tiny_diffusers_unet()
    kw = dict(schedule=NoiseSchedule.linear(10), seed=1)
    eager = ddpm_fast.sample(m, (1, 1, 8, 8), **kw)
    ddpm_fast.sample(m, (1, 1, 8, 8), compile=True, **kw)             # compiles
    got, ours = _runs(lambda: ddpm_fast.sample(m, (1, 1, 8, 8), compile=True, **kw))
    routed = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)
              and mod.stride == (1, 1) and mod.padding == (1, 1)]
    assert len(routed) >= 10
    assert ours == 10 * len(routed)
    assert (got - eager).abs().max().item() <= 1e-4
    assert eager.abs().max() > 0.1
