"""The compiled sampler's attention pass (ddpm_fast/samplers/attention_pass.py): on CPU, Inductor
gets a post-grad pass that swaps ATen's flash attention for ``ddpm_fast::attention`` where the
head is small and nothing else (mask, dropout, causality, a backward) is asked of it.

The rewrite rules run on hand-built graphs (milliseconds); the compile options without compiling;
then two Inductor compiles: a small module with one eligible attention among ineligible ones, and
the compiled sampler on a small diffusers UNet2DModel (attention_head_dim 8, as the benchmark's
dunet), whose samples must equal the eager sampler's within the compiled path's tolerance (1e-4,
tests/test_fast_sampler.py) while its graph runs the new kernel and no flash kernel.
"""
from __future__ import annotations

import collections
import operator

import pytest
import torch
import torch.nn.functional as F

import ddpm_fast
from ddpm_fast import NoiseSchedule
from ddpm_fast.ops import dispatch
from ddpm_fast.samplers import cache
from ddpm_fast.samplers.attention_pass import MAX_HEAD_DIM, PASS, route_attention, with_attention_pass

pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("cpp", "cpu") is not None,
                                reason="the C++ extension is not built")

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
OURS = torch.ops.ddpm_fast.attention.default


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear_cache()
    yield
    cache.clear_cache()


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- the rewrite, on hand-built post-grad graphs ----------------------------------------------------

def _graph(D=8, dtype=torch.float32, args=(), kwargs=None, use_logsumexp=False):
    """placeholders q, k, v (fake [1, 2, 16, D] values) -> flash -> getitem 0 (and 1) -> output."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    g = torch.fx.Graph()
    with FakeTensorMode() as mode:
        vals = [torch.empty(1, 16, 2, D, dtype=dtype).transpose(1, 2) for _ in range(3)]
        qkv = []
        for name, val in zip("qkv", vals):
            node = g.placeholder(name)
            node.meta["val"] = val
            qkv.append(node)
        flash = g.call_function(FLASH, (*qkv, *args), kwargs or {})
        flash.meta["val"] = FLASH(*vals, *args, **{k: v for k, v in (kwargs or {}).items()
                                                   if not isinstance(v, torch.fx.Node)})
    outs = [g.call_function(operator.getitem, (flash, 0))]
    if use_logsumexp:
        outs.append(g.call_function(operator.getitem, (flash, 1)))
    g.output(tuple(outs))
    return g


def _targets(g):
    return collections.Counter(n.target for n in g.nodes if n.op == "call_function")


def test_rewrites_a_small_plain_attention():
    g = _graph(D=MAX_HEAD_DIM)
    assert route_attention(g) == 1
    assert _targets(g) == {OURS: 1}
    (node,) = [n for n in g.nodes if n.target is OURS]
    assert node.args[3] == pytest.approx(MAX_HEAD_DIM ** -0.5)
    assert node.meta["val"].stride() == (16 * 2 * MAX_HEAD_DIM, MAX_HEAD_DIM, 2 * MAX_HEAD_DIM, 1)  # flash's
    g.lint()


def test_keeps_the_given_scale():
    g = _graph(kwargs={"scale": 0.125})
    assert route_attention(g) == 1
    assert next(n for n in g.nodes if n.target is OURS).args[3] == 0.125


@pytest.mark.parametrize("why,kw", [
    ("head dim past the threshold", dict(D=MAX_HEAD_DIM + 1)),
    ("float64", dict(dtype=torch.float64)),
    ("dropout", dict(args=(0.1,))),
    ("causal", dict(args=(0.0, True))),
    ("logsumexp kept for a backward", dict(use_logsumexp=True)),
])
def test_leaves_other_attention_alone(why, kw):
    g = _graph(**kw)
    assert route_attention(g) == 0, why
    assert _targets(g)[FLASH] == 1


def test_leaves_another_output_layout_alone():
    """A flash output of another layout (another torch) would not fit the views planned on it."""
    g = _graph()
    flash = next(n for n in g.nodes if n.target is FLASH)
    out, lse = flash.meta["val"]
    flash.meta["val"] = (out.contiguous(), lse)
    assert route_attention(g) == 0


def test_leaves_a_masked_attention_alone():
    g = _graph()
    flash = next(n for n in g.nodes if n.target is FLASH)
    with g.inserting_before(flash):
        mask = g.placeholder("mask")
    flash.kwargs = {"attn_mask": mask}
    assert route_attention(g) == 0


# --- the compile options ----------------------------------------------------------------------------

def test_compile_options_get_the_pass_on_cpu_only():
    kw = {"dynamic": False}
    ours = {"post_grad_custom_post_pass": PASS, "size_asserts": False}
    assert with_attention_pass(kw, "cpu") == {"dynamic": False, "options": ours}
    assert kw == {"dynamic": False}                                        # not mutated
    # torch.compile refuses mode and options together: the mode becomes its options
    got = with_attention_pass({"mode": "max-autotune-no-cudagraphs", "dynamic": False}, "cpu")
    assert "mode" not in got and got["options"] == {"max_autotune": True, "coordinate_descent_tuning": True, **ours}
    got = with_attention_pass({"options": {"cpp_wrapper": True}}, "cpu")
    assert got["options"] == {"cpp_wrapper": True, **ours}
    got = with_attention_pass({"options": {"size_asserts": True}}, "cpu")        # the caller's choice wins
    assert got["options"] == {"size_asserts": True, "post_grad_custom_post_pass": PASS}
    own = {"options": {"post_grad_custom_post_pass": lambda g: None}}      # the caller's pass stays
    for kw in (own, {"backend": "eager"}, {"backend": "aot_eager", "mode": "default"}):
        assert with_attention_pass(kw, "cpu") is kw
    assert with_attention_pass({"dynamic": False}, "cuda") == {"dynamic": False}
    with ddpm_fast.use_backend("reference"):                               # reference everywhere
        assert with_attention_pass({"dynamic": False}, "cpu") == {"dynamic": False}


def test_pass_has_a_cache_key():
    """Inductor's FX graph cache keeps working only for a pass with a uuid."""
    assert PASS.uuid()


# --- Inductor -----------------------------------------------------------------------------------------

class FourAttentions(torch.nn.Module):
    """One attention the pass takes (head dim 8) and three it leaves: head dim 16, a mask, causal."""

    def forward(self, x):                       # x [1, 32, 64]
        q = x.view(1, 32, 8, 8).transpose(1, 2)
        q16 = x.view(1, 32, 4, 16).transpose(1, 2)
        mask = torch.ones(32, 32, dtype=torch.bool).tril()
        return (F.scaled_dot_product_attention(q, q * 0.5, q).sum()
                + F.scaled_dot_product_attention(q16, q16, q16).sum()
                + F.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum()
                + F.scaled_dot_product_attention(q, q, q, is_causal=True).sum())


def _runs(fn):
    with torch.profiler.profile() as prof:
        out = fn()
    c = collections.Counter(e.name for e in prof.events())
    return out, c["ddpm_fast::attention"], c["aten::_scaled_dot_product_flash_attention_for_cpu"]


@pytest.mark.slow
def test_inductor_runs_the_kernel_where_the_pass_takes_it(one_thread):
    x = torch.randn(1, 32, 64)
    m = FourAttentions()
    with torch.no_grad():
        compiled = torch.compile(m, **with_attention_pass({"dynamic": False}, "cpu"))
        compiled(x)                                                   # compile
        got, ours, flash = _runs(lambda: compiled(x))
    assert ours == 1 and flash == 3
    torch.testing.assert_close(got, m(x), rtol=1e-5, atol=1e-4)


def tiny_diffusers_unet():
    """benchmarks/bench_cpu_targets.py's dunet, smaller (8/16 channels, 1x8x8): attention_head_dim 8
    as there; four attention calls a forward (down block, mid block, two in the up block), 2 heads."""
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


@pytest.mark.slow
@pytest.mark.parametrize("compile", [True, {"options": {"freezing": True}}], ids=["default", "freezing"])
def test_compiled_sampler_runs_the_kernel_on_a_diffusers_unet(compile, one_thread):
    pytest.importorskip("diffusers")
    m = tiny_diffusers_unet()
    kw = dict(schedule=NoiseSchedule.linear(10), seed=1)
    eager = ddpm_fast.sample(m, (1, 1, 8, 8), **kw)
    first = ddpm_fast.sample(m, (1, 1, 8, 8), compile=compile, **kw)   # compiles
    got, ours, flash = _runs(lambda: ddpm_fast.sample(m, (1, 1, 8, 8), compile=compile, **kw))
    assert torch.equal(got, first)
    calls_per_forward = sum(1 for mod in m.modules() if type(mod).__name__ == "Attention")
    assert calls_per_forward == 4
    assert ours == 10 * calls_per_forward and flash == 0
    assert (got - eager).abs().max().item() <= 1e-4
    assert eager.abs().max() > 0.1
