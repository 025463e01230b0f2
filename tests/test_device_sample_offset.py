"""The sample offset as a device value: a seed tensor int64 [2] = (key, k) counts sample b's noise
from sample_offset + k + b (docs/ops_contract.md, "Counter-based noise"), so a compiled or
captured sampler reads a chunk's offset on the device and one build serves every chunk.

Op level: every backend here (reference, cpp, triton through TRITON_INTERPRET=1, cuda on a GPU)
draws with seed [2] = (s, k) and sample_offset o exactly the noise of seed s at offset o + k; the
expectation is the reference generator (ddpm_fast.noise, checked against Random123's answers in
tests/test_noise.py) at the int offset o + k. Sampler level: builds counted by the cache."""
import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule, noise, ops
from ddpm_fast.samplers import cache, fast
from gpu_gates import requires_cuda_kernels
from toy_models import ElementwiseEps

HAS_CUDA = torch.cuda.is_available()
SCHED = NoiseSchedule.linear(20)
S, K, O = 123456789012345, 1000, 7     # key, device offset seed[1], the int sample_offset


def _backends():
    status = ddpm_fast.backends()
    out = [pytest.param("reference", "cpu", id="reference")]
    if status["cpp"] == "available":
        out.append(pytest.param("cpp", "cpu", id="cpp", marks=pytest.mark.extension))
    out.append(pytest.param("triton", "cuda" if HAS_CUDA else "cpu", id="triton", marks=pytest.mark.triton))
    out.append(pytest.param("cuda", "cuda", id="cuda", marks=[pytest.mark.cuda, requires_cuda_kernels]))
    return out


def _skip_unavailable(backend, dev):
    from ddpm_fast.ops import dispatch
    why = dispatch.unavailable_reason(backend, dev)
    if why:
        pytest.skip(f"{backend} unavailable: {why}")


def _pair(dev, s=S, k=K):
    return torch.tensor([s, k], dtype=torch.int64, device=dev)


# normals: uniforms bitwise, normals to float32 rounding of each backend's log/cos/sin
# (tests/test_noise_across_backends.py); the same backend with seed s at o + k: bitwise
ATOL = {"reference": 0.0, "cpp": 2e-6, "triton": 2e-6, "cuda": 2e-6}


@pytest.mark.parametrize("backend,dev", _backends())
def test_randn_and_rand_with_a_device_offset(backend, dev):
    _skip_unavailable(backend, dev)
    shape = (3, 2, 9)
    z = ops.randn(shape, _pair(dev), timestep=4, sample_offset=O, stream=1, backend=backend).cpu()
    same = ops.randn(shape, S, timestep=4, sample_offset=O + K, stream=1, device=dev, backend=backend).cpu()
    assert torch.equal(z, same)
    want = noise.philox_normal(S, shape, 4, O + K, stream=1)
    torch.testing.assert_close(z, want, rtol=0, atol=ATOL[backend])
    assert not torch.allclose(z, noise.philox_normal(S, shape, 4, O, stream=1))   # seed[1] is read
    u = ops.rand(shape, _pair(dev), timestep=4, sample_offset=O, stream=2, backend=backend).cpu()
    assert torch.equal(u, noise.philox_uniform(S, shape, 4, O + K, stream=2))       # bitwise
    # the op itself (a compiled sampler's call, no front): seed [2] and a [] timestep
    raw = getattr(torch.ops.ddpm_fast_triton if backend == "triton" else torch.ops.ddpm_fast, "philox_normal")
    if backend != "reference":
        t0 = torch.tensor(4, device=dev)
        torch.testing.assert_close(raw(_pair(dev), t0, 3, 18, O, 1).cpu(), want.reshape(3, 18), rtol=0,
                                   atol=ATOL[backend])


def _step_cases():
    x = torch.randn(3, 2, 4, 5)
    m = torch.randn(3, 2, 4, 5)
    t = torch.tensor([7, 0, 12])
    return x, m, t


@pytest.mark.parametrize("backend,dev", _backends())
def test_q_sample_and_steps_with_a_device_offset(backend, dev):
    """Each seeded op with seed (s, k) and sample_offset o equals the reference op fed the
    reference generator's noise of seed s at offset o + k."""
    _skip_unavailable(backend, dev)
    from ddpm_fast.noise import STREAM_Q_SAMPLE, STREAM_STEP
    x, m, t = _step_cases()
    xd, md, td = x.to(dev), m.to(dev), t.to(dev)
    tol = dict(rtol=0, atol=0) if backend == "reference" else dict(rtol=1e-5, atol=1e-5)

    x_t, eps = ops.q_sample(xd, td, SCHED, seed=_pair(dev), sample_offset=O, return_target="epsilon",
                            backend=backend)
    z = noise.philox_normal(S, x.shape, t, O + K, STREAM_Q_SAMPLE)
    torch.testing.assert_close(eps.cpu(), z, **tol)
    torch.testing.assert_close(x_t.cpu(), ops.q_sample(x, t, SCHED, z, backend="reference"), **tol)

    z = noise.philox_normal(S, x.shape, t, O + K, STREAM_STEP)
    got = ops.reverse_step(xd, md, td, SCHED, seed=_pair(dev), sample_offset=O, backend=backend)
    torch.testing.assert_close(got.cpu(), ops.reverse_step(x, m, t, SCHED, noise=z, backend="reference"), **tol)
    assert torch.equal(got, ops.reverse_step(xd, md, td, SCHED, seed=S, sample_offset=O + K, backend=backend))
    out = torch.empty_like(xd)
    ops.reverse_step(xd, md, td, SCHED, seed=_pair(dev), sample_offset=O, out=out, backend=backend)
    assert torch.equal(out, got)                                       # reverse_step_out

    tp = (t - 3).clamp(min=-1)
    got = ops.ddim_step(xd, md, td, tp.to(dev), SCHED, eta=0.7, seed=_pair(dev), sample_offset=O, backend=backend)
    want = ops.ddim_step(x, m, t, tp, SCHED, eta=0.7, noise=z, backend="reference")
    torch.testing.assert_close(got.cpu(), want, **tol)
    differ = ops.ddim_step(xd, md, td, tp.to(dev), SCHED, eta=0.7, seed=_pair(dev, k=0), sample_offset=O,
                           backend=backend)
    assert not torch.allclose(got, differ)                             # seed[1] is read


@pytest.mark.parametrize("backend,dev", _backends())
def test_bad_seed_tensors_are_clear_errors(backend, dev):
    _skip_unavailable(backend, dev)
    x, m, t = _step_cases()
    xd, md = x.to(dev), m.to(dev)
    bad = [torch.tensor([1, 2], dtype=torch.int32), torch.tensor([1, 2, 3]), torch.tensor([[1, 2]]),
           torch.tensor([1.0, 2.0]), torch.zeros(0, dtype=torch.int64)]
    for seed in bad:
        with pytest.raises(TypeError, match=r"seed tensor must be int64 \[\] / \[1\] \(the key\) or \[2\]"):
            ops.reverse_step(xd, md, 5, SCHED, seed=seed.to(dev), backend=backend)
        with pytest.raises(TypeError, match=r"seed tensor must be int64"):
            ops.randn((2, 3), seed.to(dev), backend=backend)


@pytest.mark.extension
@pytest.mark.parametrize("op", ["philox_normal", "q_sample_seeded", "reverse_step", "ddim_step"])
def test_direct_cpp_calls_check_the_seed_and_its_offset(op):
    if ddpm_fast.backends()["cpp"] != "available":
        pytest.skip("no cpp backend")
    C = torch.ops.ddpm_fast
    x = torch.randn(2, 3, 4)
    t, tab = torch.tensor(5), SCHED.table("cpu")

    def call(seed, offset=0):
        if op == "philox_normal":
            return C.philox_normal(seed, t, 2, 12, offset, 1)
        if op == "q_sample_seeded":
            return C.q_sample_seeded(x, t, tab, seed, offset, 0)
        if op == "reverse_step":
            return C.reverse_step(x, x, t, tab, None, seed, offset, 0, 0, True, 1.0, None)
        return C.ddim_step(x, x, t, t - 1, tab, None, seed, offset, 1.0, 0, True, 1.0, 1.0, None)

    with pytest.raises(RuntimeError, match=r"seed must be int64 \[\], \[1\] or \[2\]"):
        call(torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match=r"seed must be int64 \[\], \[1\] or \[2\]"):
        call(torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"sample_offset \+ seed\[1\] \+ batch must be <= 2\*\*32"):
        call(torch.tensor([1, 2 ** 32 - 5]), offset=4)
    with pytest.raises(RuntimeError, match=r"seed\[1\] \(the device sample offset\) must be >= 0"):
        call(torch.tensor([1, -1]))
    call(torch.tensor([1, 2 ** 32 - 6]), offset=4)          # the last samples of the counter: fine


def test_front_and_reference_generator_check_the_offset_range():
    """On the CPU the sum sample_offset + seed[1] + batch is checked (a host read of a CPU
    tensor); the front gives the same message for every backend."""
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"sample_offset \+ seed\[1\] \+ batch must be <= 2\*\*32"):
        ops.reverse_step(x, x, 5, SCHED, seed=torch.tensor([1, 2 ** 32 - 5]), sample_offset=4)
    with pytest.raises(ValueError, match=r"sample_offset \+ seed\[1\] \+ batch must be <= 2\*\*32"):
        ops.randn((2, 3), torch.tensor([1, 2 ** 32 - 1]))
    with pytest.raises(ValueError, match=r"seed\[1\] \(the device sample offset\) must be >= 0"):
        ops.q_sample(x, 5, SCHED, seed=torch.tensor([1, -3]))
    with pytest.raises(ValueError, match=r"sample_offset \+ seed\[1\] \+ batch must be <= 2\*\*32"):
        noise.philox_normal(torch.tensor([1, 2 ** 32]), (1, 4))
    ops.randn((2, 3), torch.tensor([1, 2 ** 32 - 3]), sample_offset=1)   # exactly at the end: fine


# --- the sampler: one build per chunk shape ------------------------------------------------------

class LearnedRange(ElementwiseEps):
    def forward(self, x, t):
        eps = super().forward(x, t)
        return torch.cat([eps, torch.tanh(x + 0.1)], dim=1)   # variance channels in [-1, 1]


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Dynamo keeps compiled variants per code object, at most 8: the tests here compile
    # ElementwiseEps.forward for many shapes, so each test starts from a clean Dynamo cache
    torch._dynamo.reset()
    cache.clear_cache()
    yield
    cache.clear_cache()


def _builds():
    return cache.cache_info()["builds"]


DYNAMO_EAGER = {"backend": "eager"}
CONFIGS = [dict(), dict(sampler="ddim", steps=7, eta=1.0), dict(variance_type="learned_range")]


@pytest.mark.parametrize("config", CONFIGS, ids=["ddpm", "ddim-eta1", "learned_range"])
@pytest.mark.parametrize("B,chunk,builds", [(6, 2, 1), (5, 2, 2)])
def test_chunks_replay_one_compiled_sampler(config, B, chunk, builds):
    m = LearnedRange() if config.get("variance_type") else ElementwiseEps()
    kw = dict(schedule=SCHED, seed=3, backend="reference", compile=DYNAMO_EAGER, sample_offset=4, **config)
    before = _builds()
    chunked = ddpm_fast.sample(m, (B, 1, 3, 3), chunk_size=chunk, **kw)
    assert _builds() - before == builds          # equal chunks share one; a smaller last one adds one
    full = ddpm_fast.sample(m, (B, 1, 3, 3), **kw)
    assert torch.equal(chunked, full)
    eager = ddpm_fast.sample(m, (B, 1, 3, 3), **{k: v for k, v in kw.items() if k != "compile"})
    assert torch.equal(full, eager)


def test_compile_true_chunks_build_once_and_equal_the_unchunked_run():
    """compile=True as a user writes it (Inductor; the fused step of the best CPU backend)."""
    m = ElementwiseEps()
    kw = dict(schedule=SCHED, seed=11, compile=True)
    before = _builds()
    chunked = ddpm_fast.sample(m, (6, 1, 4, 4), chunk_size=3, **kw)
    assert _builds() - before == 1
    assert torch.equal(chunked, ddpm_fast.sample(m, (6, 1, 4, 4), **kw))


def test_more_chunks_than_cache_entries_do_not_rebuild_every_call():
    """More than MAX_ENTRIES chunks used to evict each other: every call rebuilt them all."""
    m = ElementwiseEps()
    n = cache.MAX_ENTRIES + 2
    kw = dict(schedule=SCHED, seed=5, backend="reference", compile=DYNAMO_EAGER)
    before = _builds()
    a = ddpm_fast.sample(m, (n, 1, 2, 2), chunk_size=1, **kw)
    assert _builds() - before == 1
    b = ddpm_fast.sample(m, (n, 1, 2, 2), chunk_size=1, **kw)
    assert _builds() - before == 1 and torch.equal(a, b)
    assert cache.cache_info()["entries"] == 1


def test_a_shard_reuses_the_sampler_of_another_offset():
    """sample_offset is not part of the cache key: a shard at another offset replays the entry."""
    m = ElementwiseEps()
    kw = dict(schedule=SCHED, seed=5, backend="reference", compile=DYNAMO_EAGER)
    full = ddpm_fast.sample(m, (4, 1, 2, 2), **kw)
    before = _builds()
    parts = [ddpm_fast.sample(m, (2, 1, 2, 2), sample_offset=o, **kw) for o in (0, 2)]
    assert _builds() - before == 1
    assert torch.equal(torch.cat(parts), full)


class _EagerReplay(fast.GraphSampler):
    """GraphSampler whose "capture" records the function itself (tests/test_fast_sampler.py)."""
    needs_cuda = False

    def _record(self, fn):
        return fn


@pytest.mark.parametrize("B,chunk,captures", [(6, 2, 1), (5, 2, 2)])
def test_graph_runner_chunks_capture_once(monkeypatch, B, chunk, captures):
    """The graph path's bookkeeping on the CPU: the static seed buffer [2] gets each chunk's
    (seed, offset) before the replay."""
    monkeypatch.setattr(fast, "GraphSampler", _EagerReplay)
    m = ElementwiseEps()
    spec_kw = dict(schedule=SCHED, seed=9, backend="reference", sample_offset=3)
    from ddpm_fast.samplers.settings import make_spec, resolve
    sched, settings = resolve(SCHED, {})
    spec = make_spec(sched, settings, (B, 1, 3, 3), torch.device("cpu"), torch.float32, 3, "reference", True)
    before = cache.cache_info()["captures"]
    x = fast.sample_fast(spec.resolve(), m, None, 9, None, compile=False, mode="step", auto_graph=False,
                         chunk_size=chunk, progress=False, every=0)
    assert cache.cache_info()["captures"] - before == captures
    assert torch.equal(x, ddpm_fast.sample(m, (B, 1, 3, 3), **spec_kw))


@pytest.mark.cuda
@requires_cuda_kernels
@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_graph_chunks_capture_once(compile_):
    m = ElementwiseEps().cuda()
    kw = dict(schedule=SCHED, seed=3, device="cuda", compile=compile_, sample_offset=2)
    before = cache.cache_info()["captures"]
    chunked = ddpm_fast.sample(m, (6, 1, 4, 4), chunk_size=2, **kw)
    assert cache.cache_info()["captures"] - before == 1
    full = ddpm_fast.sample(m, (6, 1, 4, 4), **kw)
    assert torch.equal(chunked, full)
    torch.testing.assert_close(full, ddpm_fast.sample(m, (6, 1, 4, 4), cuda_graph=False, **kw), rtol=0, atol=1e-5)
