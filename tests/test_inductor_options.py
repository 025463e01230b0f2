"""Inductor options through ``compile=`` (ddpm_fast/samplers/compiled.py, ``compiled_model``):
weight freezing is an opt-in that keeps the sampler cache's contract (an in-place weight
update is picked up: with frozen weights it compiles afresh), and the option never reaches
torch.compile's ``options`` (where it would freeze nothing) nor the step's compile.

The cache test compiles with Dynamo's "eager" backend (seconds); the Inductor test compiles a
one-parameter model twice (slow on the shared 2-core machine: minutes under load).
"""
import warnings

import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule
from ddpm_fast.samplers import cache
from ddpm_fast.samplers.compiled import (_without_freezing, compile_kwargs, compiled_model,
                                         freezes_weights, weight_versions)
from toy_models import ElementwiseEps

SCHED = NoiseSchedule.linear(20)
SHAPE = (3, 1, 4, 4)


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear_cache()
    yield
    cache.clear_cache()


def _eager(model):
    return ddpm_fast.sample(model, SHAPE, schedule=SCHED, seed=3)


def test_freezing_is_taken_out_of_torch_compiles_options():
    """torch.compile refuses mode and options together: an options dict emptied by taking
    freezing out goes; other options and kwargs pass through untouched."""
    kw = compile_kwargs({"options": {"freezing": True}}, capturing=False)
    assert kw == {"options": {"freezing": True}, "dynamic": False} and freezes_weights(kw)
    assert _without_freezing(kw) == {"dynamic": False}
    both = {"options": {"freezing": True, "cpp_wrapper": True}, "dynamic": False}
    assert _without_freezing(both) == {"options": {"cpp_wrapper": True}, "dynamic": False}
    plain = {"mode": "max-autotune-no-cudagraphs", "dynamic": False}
    assert _without_freezing(plain) is plain and not freezes_weights(plain)
    assert not freezes_weights({"options": {"freezing": False}}) and not freezes_weights(None)


def test_weight_versions_follow_tracked_in_place_updates():
    m = ElementwiseEps()
    v0 = weight_versions(m)
    with torch.no_grad():
        m.w.mul_(2)
    assert weight_versions(m) != v0
    assert weight_versions(lambda x, t: x) == ()


def test_frozen_compile_rebuilds_on_an_in_place_update():
    """With freezing the key holds the weights' versions: the same call reuses the entry, an
    in-place update rebuilds it (announced) and its samples follow the new weights."""
    m = ElementwiseEps(0.3)
    kw = {"compile": {"backend": "eager", "options": {"freezing": True}}}
    first = ddpm_fast.sample(m, SHAPE, schedule=SCHED, seed=3, **kw)
    assert torch.equal(first, _eager(m))
    builds = cache.cache_info()["builds"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(ddpm_fast.sample(m, SHAPE, schedule=SCHED, seed=3, **kw), first)
    assert cache.cache_info()["builds"] == builds
    with torch.no_grad():
        m.w.copy_(torch.tensor(0.7))
    with pytest.warns(RuntimeWarning, match="frozen weights"):
        got = ddpm_fast.sample(m, SHAPE, schedule=SCHED, seed=3, **kw)
    assert cache.cache_info()["builds"] == builds + 1
    assert torch.equal(got, _eager(ElementwiseEps(0.7)))


def test_freezing_needs_a_module():
    with pytest.raises(ValueError, match="nn.Module"):
        compiled_model(lambda x, t: x, {"options": {"freezing": True}})


@pytest.mark.slow
def test_inductor_freezes_the_weights_and_samples_like_eager(monkeypatch):
    """Inductor really freezes (its freeze pass turns the parameter into a constant: fewer
    graph inputs than the traced graph had), the samples equal the eager sampler's within
    the compiled path's tolerance (1e-4, tests/test_fast_sampler.py), and after an in-place
    update the rebuilt compile uses the new weight (a 0-dim weight: Inductor writes it into
    the code as a literal, which its FX graph cache would hand back, see ``_frozen_model``)."""
    import torch._inductor.freezing as freezing
    frozen = []
    real_freeze = freezing.freeze

    def spy(dynamo_gm, aot_gm, example_inputs):
        out, kept = real_freeze(dynamo_gm, aot_gm, example_inputs)
        frozen.append(len(example_inputs) - len(kept))
        return out, kept
    monkeypatch.setattr(freezing, "freeze", spy)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = ElementwiseEps(0.3)
        kw = {"compile": {"options": {"freezing": True}}}
        got = ddpm_fast.sample(m, SHAPE, schedule=SCHED, seed=3, **kw)
        assert frozen and frozen[0] >= 1, frozen
        assert (got - _eager(m)).abs().max().item() <= 1e-4
        with torch.no_grad():
            m.w.copy_(torch.tensor(-0.5))
        with pytest.warns(RuntimeWarning, match="frozen weights"):
            got = ddpm_fast.sample(m, SHAPE, schedule=SCHED, seed=3, **kw)
        assert len(frozen) == 2 and frozen[1] >= 1, frozen   # a fresh trace, frozen again
        assert (got - _eager(ElementwiseEps(-0.5))).abs().max().item() <= 1e-4
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("capability,cache_dir,warns", [
    ("avx2", None, True),          # forced, Inductor's default cache: shared with other capabilities
    ("avx2", "own", False),        # forced, a cache of its own
    (None, None, False),           # not forced
])
def test_forced_cpu_capability_with_the_default_inductor_cache_warns(monkeypatch, tmp_path, capability,
                                                                      cache_dir, warns):
    """compile=True on CPU under ATEN_CPU_CAPABILITY with Inductor's default cache directory warns
    (samplers/compiled.py ``warn_if_capability_shares_cache``); a private cache directory or no
    forced capability does not. Checked where the compile starts (``compiled_model``), with
    Dynamo's "eager" backend so nothing is built."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    for name, value in (("ATEN_CPU_CAPABILITY", capability),
                        ("TORCHINDUCTOR_CACHE_DIR", str(tmp_path) if cache_dir else default_cache_dir())):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled_model(ElementwiseEps(), {"backend": "eager"}, "cpu")
    hits = [w for w in caught if "ATEN_CPU_CAPABILITY" in str(w.message)]
    assert len(hits) == (1 if warns else 0), [str(w.message) for w in caught]
    if warns:
        assert issubclass(hits[0].category, RuntimeWarning) and "TORCHINDUCTOR_CACHE_DIR" in str(hits[0].message)
