"""The fast sampler (ddpm_fast/samplers/fast.py): compiled and CUDA-graph-captured loops give
the eager sampler's samples, reuse their compile/capture, rebuild when weights are replaced,
never sync inside the loop and never touch the user's RNG (PITFALLS.md, Speed and
Reproducibility).

On CPU the Inductor tests compile a small UNet once (shared by the DDPM and DDIM runs); the
cache/chunk/RNG tests compile with Dynamo's "eager" backend, which exercises the same
machinery (tracing, guards, our cache) in seconds. The CUDA tests skip without a GPU.
"""
import warnings

import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule, UNet
from ddpm_fast.samplers import cache, fast
from ddpm_fast.samplers.compiled import compile_kwargs
from ddpm_fast.samplers.graph import GraphSampler

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SCHED = NoiseSchedule.linear(20)
DYNAMO_EAGER = {"backend": "eager"}   # Dynamo tracing + our cache, no Inductor codegen


def _has_cpp() -> bool:
    return ddpm_fast.backends()["cpp"] == "available"


class ElementwiseEps(torch.nn.Module):
    def __init__(self, w=0.3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, x, t):
        return torch.tanh(x * self.w + t.view(-1, *([1] * (x.dim() - 1))).float() / 20)


class ClassConditional(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 2)

    def forward(self, x, t, y):
        return 0.1 * x + self.emb(y)[:, :, None, None]


def small_unet() -> UNet:
    """UNet.tiny, smaller still (16 channels, 8x8, one downsampling: ~30 fused kernels to
    compile), with every weight random so the output depends on x and t (the zero-initialised
    output conv would otherwise make eps = 0)."""
    torch.manual_seed(1)
    m = UNet.tiny(in_channels=1, resolution=8, ch=16, ch_mult=(1, 2), num_groups=4).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3 / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.05)
    return m


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear_cache()
    yield
    cache.clear_cache()


# --- Inductor: the compiled sampler equals the reference and the fused eager sampler ------------

@pytest.fixture(scope="module")
def unet():
    return small_unet()


@pytest.fixture
def one_thread():
    """Inductor's CPU kernels open an OpenMP region per kernel; on a shared 2-core machine a
    descheduled second thread makes every region spin for milliseconds (measured: a 3072-element
    step 17 ms at 2 threads, 0.2 ms at 1). One thread keeps these tests' time predictable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 50, 0.5)])
def test_compiled_equals_reference_and_fused_eager(unet, sampler, steps, eta, record_property, one_thread):
    """T = 1000 DDPM and a 50-step DDIM (eta 0.5: noise every step), one seed, fp32.

    reference: every op on the reference backend (the UNet's norms and the step); fused eager:
    the C++ backend; compiled: the CPU fast path, Inductor-compiled UNet + compiled step over the
    C++ ops (reference ops without the extension). One UNet compile serves both samplers."""
    kw = dict(schedule=NoiseSchedule.linear(1000), sampler=sampler, steps=steps, eta=eta, seed=123)
    shape = (2, 1, 8, 8)
    with ddpm_fast.use_backend("reference"):
        ref = ddpm_fast.sample(unet, shape, **kw)
    fused = "cpp" if _has_cpp() else "reference"
    out = {}
    with ddpm_fast.use_backend(fused):
        if fused == "cpp":
            out["fused eager (cpp)"] = ddpm_fast.sample(unet, shape, **kw)
        out[f"compiled ({fused} ops)"] = ddpm_fast.sample(unet, shape, compile=True, **kw)
    for name, x in out.items():
        err = (x - ref).abs().max().item()
        print(f"{sampler}: max |{name} - reference| = {err:.3g}")
        record_property(f"{sampler} {name} max abs diff", err)
        assert torch.isfinite(x).all()
        assert err <= 1e-4, f"{name}: {err}"
    assert ref.abs().max() > 0.1   # the samples are not trivially zero


# --- cache, chunks, RNG, kwargs (Dynamo "eager" backend) ------------------------------------------

def _sample(model, shape=(4, 1, 3, 3), **kw):
    kw = {"schedule": SCHED, "seed": 3, "backend": "reference", "compile": DYNAMO_EAGER, **kw}
    return ddpm_fast.sample(model, shape, **kw)


def _eager(model, shape=(4, 1, 3, 3), **kw):
    return ddpm_fast.sample(model, shape, schedule=SCHED, seed=3, backend="reference", **kw)


@pytest.mark.filterwarnings("ignore:ddpm_fast. compiling the sampler again")
def test_fast_path_equals_eager_and_chunks_equal_one_batch():
    m = ElementwiseEps()
    full = _eager(m, (5, 1, 3, 3))
    assert torch.equal(_sample(m, (5, 1, 3, 3)), full)
    assert torch.equal(_sample(m, (5, 1, 3, 3), chunk_size=2), full)        # chunks 2, 2, 1
    assert torch.equal(_sample(m, (2, 1, 3, 3), sample_offset=3), full[3:])  # a shard
    ddim = dict(sampler="ddim", steps=7, eta=1.0)
    assert torch.equal(_sample(m, (5, 1, 3, 3), chunk_size=3, **ddim), _eager(m, (5, 1, 3, 3), **ddim))


def test_second_call_reuses_the_compiled_sampler(caplog):
    m = ElementwiseEps()
    a = _sample(m)
    assert cache.cache_info()["entries"] == 1
    with caplog.at_level("INFO", logger="ddpm_fast.samplers"), warnings.catch_warnings():
        warnings.simplefilter("error")            # no recompile warning
        b = _sample(m, seed=4)
        c = _sample(m, schedule=NoiseSchedule.linear(20))   # an equal, fresh schedule object
    assert not caplog.records and cache.cache_info()["entries"] == 1
    assert not torch.equal(a, b) and torch.equal(a, c)


def test_recompile_is_announced_with_what_changed():
    m = ElementwiseEps()
    _sample(m)
    with pytest.warns(RuntimeWarning, match="shape changed"):
        _sample(m, (3, 1, 3, 3))
    assert cache.cache_info()["entries"] == 2


def test_replacing_a_parameter_rebuilds_and_in_place_updates_are_seen():
    """stable-fast #141/#143: new tensors (EMA swap, load_state_dict(assign=True)) rebuild;
    an in-place update keeps the compiled sampler and is picked up."""
    m = ElementwiseEps(0.3)
    _sample(m)
    with torch.no_grad():
        m.w.copy_(torch.tensor(0.7))                           # in place: same storage
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _sample(m)
    assert torch.equal(got, _eager(ElementwiseEps(0.7)))
    m.load_state_dict({"w": torch.tensor(-0.5)}, assign=True)  # a new tensor
    with pytest.warns(RuntimeWarning, match="parameters"):
        got = _sample(m)
    assert torch.equal(got, _eager(ElementwiseEps(-0.5)))


def test_compiling_leaves_the_users_rng_alone():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    _sample(ElementwiseEps(), seed=9)
    assert torch.equal(state, torch.get_rng_state())


def test_class_labels_of_each_call_are_used():
    """The compiled sampler reads the kwargs of this call, not those it was built with."""
    m = ClassConditional()
    for labels in ([1, 2], [7, 7]):
        y = torch.tensor(labels)
        got = _sample(m, (2, 2, 3, 3), model_kwargs={"y": y})
        assert torch.equal(got, _eager(m, (2, 2, 3, 3), model_kwargs={"y": y}))


def test_intermediates_x_T_and_nan_report():
    m = ElementwiseEps()
    x, inter = _sample(m, return_intermediates=True, intermediate_every=5)
    x_e, inter_e = _eager(m, return_intermediates=True, intermediate_every=5)
    assert torch.equal(x, x_e) and len(inter) == 4 and all(map(torch.equal, inter, inter_e))
    x_T = torch.randn(4, 1, 3, 3)
    assert torch.equal(_sample(m, x_T=x_T), _eager(m, x_T=x_T))

    def bad(x, t):
        return torch.where(t.view(-1, 1, 1, 1) == 13, float("nan"), 0.0) + 0 * x
    with pytest.raises(FloatingPointError, match="timestep 13"):
        _sample(bad)


def test_bad_fast_path_arguments():
    m = ElementwiseEps()
    with pytest.raises(ValueError, match="needs a CUDA device"):
        ddpm_fast.sample(m, (1, 1, 2, 2), schedule=SCHED, seed=0, cuda_graph=True, device="cpu")
    with pytest.raises(ValueError, match="cuda_graph must be"):
        fast.graph_mode("sometimes", torch.device("cuda"))
    with pytest.raises(ValueError, match="chunk_size"):
        _sample(m, chunk_size=-1)
    with pytest.raises(ValueError, match="returned shape"):
        _sample(lambda x, t: x[:, :1], (2, 2, 3, 3))
    assert fast.graph_mode(None, torch.device("cpu")) is None
    assert fast.graph_mode(None, torch.device("cuda")) == "step"
    assert fast.graph_mode("loop", torch.device("cuda")) == "loop"


# --- the graph runner's bookkeeping, on CPU: the "graph" replays the recorded Python function --

class EagerReplay(GraphSampler):
    """GraphSampler whose capture records the function itself: static buffers, seed refill,
    counter reset, kwargs copy, intermediates and the in-place step (reverse_step_out writing
    into x_t) run as on a GPU, minus the CUDA graph."""
    needs_cuda = False

    def _record(self, fn):
        return fn


def _spec(shape, backend, sampler="ddpm", steps=None, eta=0.0):
    from ddpm_fast.sampling import _make_spec, _resolve_schedule
    sched, pred = _resolve_schedule(SCHED, None)
    return _make_spec(sched, pred, shape, torch.device("cpu"), torch.float32, sampler, steps, eta,
                      "fixed_small", True, 1.0, "leading", 0, True, 0, backend, True)


_CPP = pytest.mark.skipif(not _has_cpp(), reason="no cpp backend")
DDPM, DDIM = ("ddpm", None, 0.0), ("ddim", 10, 1.0)
RUNNER_CASES = [  # backend, mode, (sampler, steps, eta), compiled; cpp + ddpm = reverse_step_out into x
    ("reference", "step", DDPM, False), ("reference", "loop", DDIM, False),
    pytest.param("cpp", "step", DDPM, False, marks=_CPP), pytest.param("cpp", "loop", DDIM, False, marks=_CPP),
    ("reference", "loop", DDPM, True), pytest.param("cpp", "step", DDIM, True, marks=_CPP),
]


@pytest.mark.parametrize("backend,mode,case,compiled", RUNNER_CASES)
def test_graph_runner_replays_like_the_eager_sampler(backend, mode, case, compiled):
    sampler, steps, eta = case
    m = ClassConditional()
    shape, y = (3, 2, 3, 3), torch.tensor([1, 2, 3])
    ckw = compile_kwargs(DYNAMO_EAGER, capturing=True) if compiled else None
    runner = EagerReplay(_spec(shape, backend, sampler, steps, eta), m, {"y": y}, ckw, mode, intermediate_every=5)
    kw = dict(sampler=sampler, steps=steps, eta=eta, backend=backend, return_intermediates=True,
              intermediate_every=5)
    for seed, labels in ((3, [1, 2, 3]), (4, [0, 0, 9]), (3, [1, 2, 3])):   # new seed / labels: no rebuild
        y = torch.tensor(labels)
        x, inter, bad = runner.run(seed, None, {"y": y}, False, 5)
        want, want_inter = ddpm_fast.sample(m, shape, schedule=SCHED, seed=seed, model_kwargs={"y": y}, **kw)
        torch.testing.assert_close(x, want, rtol=0, atol=1e-6)
        assert len(inter) == len(want_inter) and all(
            torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(inter, want_inter))
        assert int(bad) == -1
    with torch.no_grad():
        m.emb.weight.mul_(2)                      # in place: the "graph" must see it
    x, _, _ = runner.run(3, None, {"y": y}, False, 0)
    want = ddpm_fast.sample(m, shape, schedule=SCHED, seed=3, model_kwargs={"y": y}, sampler=sampler,
                            steps=steps, eta=eta, backend=backend)
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6)


# --- CUDA graphs (skipped without a GPU) ------------------------------------------------------

def _cuda_unet():
    return small_unet().cuda()


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mode", [True, "loop"])
@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 50, 0.5)])
def test_graph_equals_eager_on_gpu(mode, sampler, steps, eta):
    m = _cuda_unet()
    kw = dict(schedule=NoiseSchedule.linear(1000), sampler=sampler, steps=steps, eta=eta, seed=7,
              device="cuda")
    eager = ddpm_fast.sample(m, (3, 1, 8, 8), cuda_graph=False, **kw)
    graph = ddpm_fast.sample(m, (3, 1, 8, 8), cuda_graph=mode, **kw)
    torch.testing.assert_close(graph, eager, rtol=0, atol=1e-5)   # same kernels, same order
    compiled = ddpm_fast.sample(m, (3, 1, 8, 8), cuda_graph=mode, compile=True, **kw)
    assert (compiled - eager).abs().max().item() <= 1e-4


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "loop"])
def test_graph_loop_has_no_host_sync(mode):
    m = _cuda_unet()
    kw = dict(schedule=NoiseSchedule.linear(50), seed=1, device="cuda", cuda_graph=mode, check_nan=False)
    ddpm_fast.sample(m, (4, 1, 8, 8), **kw)              # capture (syncs are allowed here)
    torch.cuda.synchronize()
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ddpm_fast.sample(m, (4, 1, 8, 8), **{**kw, "seed": 2})   # replay: must not sync
        out2 = ddpm_fast.sample(m, (4, 1, 8, 8), **{**kw, "seed": 3, "compile": False})
    finally:
        torch.cuda.set_sync_debug_mode(old)
    assert out.shape == out2.shape == (4, 1, 8, 8)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mode", [True, "loop"])
def test_graph_replays_new_seeds_without_recapture(mode):
    m = _cuda_unet()
    kw = dict(schedule=NoiseSchedule.linear(100), device="cuda", cuda_graph=mode)
    a = ddpm_fast.sample(m, (2, 1, 8, 8), seed=1, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = ddpm_fast.sample(m, (2, 1, 8, 8), seed=2, **kw)
        c = ddpm_fast.sample(m, (2, 1, 8, 8), seed=1, **kw)
    assert cache.cache_info()["entries"] == 1
    assert not torch.equal(a, b) and torch.equal(a, c)


@requires_cuda
@pytest.mark.cuda
def test_graph_sees_in_place_updates_and_recaptures_on_replacement():
    m = ElementwiseEps(0.3).cuda()
    kw = dict(schedule=SCHED, seed=3, device="cuda", backend="reference")
    ddpm_fast.sample(m, (4, 1, 3, 3), **kw)
    with torch.no_grad():
        m.w.copy_(torch.tensor(0.7))
    ref = ddpm_fast.sample(ElementwiseEps(0.7).cuda(), (4, 1, 3, 3), cuda_graph=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(ddpm_fast.sample(m, (4, 1, 3, 3), **kw), ref)
    m.w = torch.nn.Parameter(torch.tensor(-0.5, device="cuda"))
    ref = ddpm_fast.sample(ElementwiseEps(-0.5).cuda(), (4, 1, 3, 3), cuda_graph=False, **kw)
    with pytest.warns(RuntimeWarning, match="parameters"):
        assert torch.equal(ddpm_fast.sample(m, (4, 1, 3, 3), **kw), ref)


@requires_cuda
@pytest.mark.cuda
def test_capture_leaves_the_users_rng_alone_and_chunks_match():
    m = ElementwiseEps().cuda()
    kw = dict(schedule=SCHED, seed=3, device="cuda", backend="reference")
    cpu, gpu = torch.get_rng_state(), torch.cuda.get_rng_state()
    full = ddpm_fast.sample(m, (5, 1, 3, 3), **kw)
    assert torch.equal(cpu, torch.get_rng_state()) and torch.equal(gpu, torch.cuda.get_rng_state())
    assert torch.equal(ddpm_fast.sample(m, (5, 1, 3, 3), chunk_size=2, **kw), full)
    assert torch.equal(ddpm_fast.sample(m, (5, 1, 3, 3), cuda_graph=False, **kw), full)


@requires_cuda
@pytest.mark.cuda
def test_graph_nan_report_and_intermediates():
    def bad(x, t):
        return torch.where(t.view(-1, 1, 1, 1) == 13, float("nan"), 0.0) + 0 * x
    with pytest.raises(FloatingPointError, match="timestep 13"):
        ddpm_fast.sample(bad, (2, 1, 3, 3), schedule=SCHED, seed=0, device="cuda", cuda_graph=True)
    m = ElementwiseEps().cuda()
    kw = dict(schedule=SCHED, seed=3, device="cuda", return_intermediates=True, intermediate_every=5)
    x_e, inter_e = ddpm_fast.sample(m, (2, 1, 3, 3), cuda_graph=False, **kw)
    for mode in (True, "loop"):
        x, inter = ddpm_fast.sample(m, (2, 1, 3, 3), cuda_graph=mode, **kw)
        assert torch.equal(x, x_e) and all(map(torch.equal, inter, inter_e))
