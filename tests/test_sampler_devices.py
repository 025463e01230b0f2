"""The fast sampler on devices other than the current one, Inductor's own CUDA graphs, Python
3.10's code objects, compile-first UNets, and proof that the fast path ran (it is built once
and its runner says how it samples). The device-independent logic runs on CPU with fakes; the
end-to-end checks are marked ``cuda``."""
import contextlib
import pathlib
import shutil
import subprocess
import textwrap
import types
import warnings

import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule, UNet
from ddpm_fast.samplers import cache, compiled, fast, graph
from gpu_gates import auto_cuda_backend
from toy_models import ElementwiseEps as Eps

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SCHED = NoiseSchedule.linear(20)
DYNAMO_EAGER = {"backend": "eager"}


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear_cache()
    yield
    cache.clear_cache()


# --- a host x_T on an accelerator run ------------------------------------------------------

def _cuda_spec(shape=(2, 1, 2, 2), index=0):
    return types.SimpleNamespace(device=torch.device("cuda", index), shape=shape)


def test_host_x_T_for_an_accelerator_run_is_checked_on_the_host():
    """A CPU x_T is read where it is (no device sync is involved): NaN is an error before any
    step, and no CPU flag is left to be concatenated with the device's NaN records."""
    x_T = torch.zeros(2, 1, 2, 2)
    assert fast._check_start(x_T, _cuda_spec()) is None
    x_T[1, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="x_T contains NaN"):
        fast._check_start(x_T, _cuda_spec())


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("cuda_graph", [None, False])
def test_cpu_x_T_on_a_cuda_run(cuda_graph):
    m = Eps().cuda()
    kw = dict(schedule=SCHED, seed=1, device="cuda", cuda_graph=cuda_graph,
              compile=cuda_graph is False and DYNAMO_EAGER)
    x_T = torch.randn(2, 1, 3, 3)
    out = ddpm_fast.sample(m, (2, 1, 3, 3), x_T=x_T, **kw)
    assert torch.equal(out, ddpm_fast.sample(m, (2, 1, 3, 3), x_T=x_T.cuda(), **kw))
    x_T[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="x_T contains NaN or inf"):
        ddpm_fast.sample(m, (2, 1, 3, 3), x_T=x_T, **kw)
    with pytest.raises(ValueError, match="x_T contains NaN or inf"):
        ddpm_fast.sample(m, (2, 1, 3, 3), x_T=x_T.cuda(), **kw)   # checked on the device, after


# --- capture on the sampler's device ----------------------------------------------------------

def test_a_failed_default_capture_warns_and_an_asked_one_raises(monkeypatch):
    """cuda_graph=None (the default on CUDA) falls back to the uncaptured loop with a warning
    naming the error; an explicit cuda_graph=True/"step"/"loop" raises it (fast.py _build).
    With fakes: the capture fails on purpose, so no GPU is needed."""
    def failing_capture(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    synced = []
    monkeypatch.setattr(fast, "GraphSampler", failing_capture)
    monkeypatch.setattr(fast, "LoopSampler", lambda *args: "loop sampler")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    spec = types.SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.warns(RuntimeWarning, match="capturing the sampler as a CUDA graph failed "
                                            r"\(RuntimeError: operation not permitted"):
        assert fast._build(spec, None, {}, None, "step", 0, auto=True) == "loop sampler"
    assert synced == [spec.device]
    with pytest.raises(RuntimeError, match="operation not permitted"):
        fast._build(spec, None, {}, None, "step", 0, auto=False)


def test_capture_uses_a_stream_of_the_samplers_device(monkeypatch):
    """With the model on cuda:1 the graph is captured on a cuda:1 stream with cuda:1 current
    (torch.cuda.graph's default stream is made once, on whatever device was current)."""
    seen = {}
    current = ["cuda:0"]

    class FakeGraph:
        def replay(self):
            seen["replayed"] = True

    class FakeStream:
        def __init__(self, device=None):
            self.device = torch.device(device)

    @contextlib.contextmanager
    def fake_device(dev):
        old, current[0] = current[0], str(torch.device(dev))
        yield
        current[0] = old

    @contextlib.contextmanager
    def fake_graph(g, stream=None, **kw):
        seen["stream"] = stream
        seen["device at capture"] = current[0]
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    runner = graph.GraphSampler.__new__(graph.GraphSampler)
    runner.spec = _cuda_spec(index=1)
    replay = runner._record(lambda: seen.setdefault("recorded on", current[0]))
    assert seen["recorded on"] == "cuda:1" and seen["device at capture"] == "cuda:1"
    assert isinstance(seen["stream"], FakeStream) and seen["stream"].device == torch.device("cuda", 1)
    replay()
    assert seen["replayed"] and current[0] == "cuda:0"


@requires_cuda
@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_graph_on_the_second_gpu_while_the_first_is_current():
    m = Eps().to("cuda:1")
    kw = dict(schedule=SCHED, seed=2, device="cuda:1")
    with torch.cuda.device(0), warnings.catch_warnings():
        warnings.simplefilter("error")            # no silent fallback to the eager loop
        out = ddpm_fast.sample(m, (2, 1, 3, 3), cuda_graph=True, **kw)
    assert cache.cache_info()["captures"] >= 1
    assert torch.equal(out, ddpm_fast.sample(m, (2, 1, 3, 3), cuda_graph=False, **kw))


# --- Inductor's own CUDA graphs without ours ---------------------------------------------------

@pytest.mark.parametrize("ckw", ["reduce-overhead", "max-autotune", {"mode": "reduce-overhead"},
                                 {"options": {"triton.cudagraphs": True}}])
def test_inductor_cudagraphs_without_our_capture_are_refused_on_cuda(ckw):
    with pytest.raises(ValueError, match="cuda_graph=True"):
        compiled.compile_kwargs(ckw, capturing=False, device_type="cuda")
    # with our capture they are switched off; on CPU Inductor makes no CUDA graphs
    assert compiled.compile_kwargs(ckw, capturing=True, device_type="cuda").get("mode") in (
        None, "default", "max-autotune-no-cudagraphs")
    assert compiled.compile_kwargs(ckw, capturing=False, device_type="cpu")["dynamic"] is False


@requires_cuda
@pytest.mark.cuda
def test_reduce_overhead_without_cuda_graph_is_refused_before_compiling():
    with pytest.raises(ValueError, match="overwrites"):
        ddpm_fast.sample(Eps().cuda(), (2, 1, 3, 3), schedule=SCHED, seed=0, device="cuda",
                         compile="reduce-overhead", cuda_graph=False)
    assert cache.cache_info()["entries"] == 0


# --- Python 3.10 code objects -----------------------------------------------------------------

class Code310:
    """A code object as Python 3.10 has it: no co_qualname, replace() rejects the keyword."""
    co_name = "f"

    def replace(self, **kw):
        if set(kw) - {"co_name"}:
            raise TypeError(f"replace() got an unexpected keyword argument {sorted(kw)}")
        out = Code310()
        out.co_name = kw["co_name"]
        return out


def test_renamed_code_works_without_co_qualname():
    assert compiled.renamed_code(Code310(), "f_7").co_name == "f_7"

    def f():
        return 1
    code = compiled.renamed_code(f.__code__, "f_8")
    assert code.co_name == "f_8" and getattr(code, "co_qualname", "f_8") == "f_8"


def _python310():
    """A working Python 3.10 interpreter (PATH, then pyenv's versions), or None."""
    pyenv = pathlib.Path.home().glob(".pyenv/versions/3.10*/bin/python3.10")
    found = [shutil.which("python3.10"), *sorted(map(str, pyenv))]
    for exe in filter(None, found):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.stdout.strip() == "True":
            return exe
    return None


PY310 = _python310()


@pytest.mark.skipif(PY310 is None, reason="needs a python3.10 interpreter on PATH")
def test_renamed_code_on_a_real_python_310():
    """setup.py allows Python 3.10: the package parses there, and renamed_code (taken from the
    source, as 3.10 has no torch here) renames a 3.10 code object that can still be called."""
    script = textwrap.dedent(f"""
        import ast, pathlib, types
        root = pathlib.Path({str(pathlib.Path(compiled.__file__).parents[1])!r})
        for path in root.rglob("*.py"):
            ast.parse(path.read_text(encoding="utf-8"), str(path))
        src = (root / "samplers" / "compiled.py").read_text(encoding="utf-8")
        fn = next(n for n in ast.parse(src).body if getattr(n, "name", "") == "renamed_code")
        ns = {{"types": types}}
        exec(compile(ast.Module([fn], []), "compiled.py", "exec"), ns)
        def step():
            return 41 + 1
        code = ns["renamed_code"](step.__code__, "step_3")
        print(code.co_name, types.FunctionType(code, {{}}, "step_3")(), hasattr(code, "co_qualname"))
    """)
    out = subprocess.run([PY310, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["step_3", "42", "False"]


# --- compile-first UNet ----------------------------------------------------------------------

def test_unet_moved_then_compiled_fullgraph_resolves_nothing_inside_the_trace(monkeypatch):
    """``.to(device)`` resolves the fused ops for the new device, so a compile-first forward
    (no eager call before it) never looks an op up inside Dynamo's trace, where the lookup
    (backend imports, device queries) would break a fullgraph compile. Emulated on CPU: the
    resolution cache is emptied after construction, as for a device never seen."""
    from ddpm_fast.ops import dispatch
    m = UNet.tiny(in_channels=1, resolution=8, ch=16, ch_mult=(1, 2), num_groups=4).eval()
    real = dispatch._resolve

    def resolve_outside_traces(*args):
        assert not torch.compiler.is_compiling(), "an op was resolved inside a trace"
        return real(*args)
    monkeypatch.setattr(dispatch, "_resolved", {})
    monkeypatch.setattr(dispatch, "_resolve", resolve_outside_traces)
    m = m.to("cpu")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    with torch.no_grad():
        got = torch.compile(m, fullgraph=True, backend="eager")(x, t)
        torch.testing.assert_close(got, m(x, t), rtol=0, atol=0)


def test_setting_the_unet_backend_resolves_it(monkeypatch):
    from ddpm_fast.ops import dispatch
    m = UNet.tiny(in_channels=1, resolution=8, ch=16, ch_mult=(1, 2), num_groups=4).eval()
    monkeypatch.setattr(dispatch, "_resolved", {})
    m.backend = "reference"
    assert ("groupnorm_temb_silu", "reference", "cpu") in dispatch._resolved


# --- the fast path ran, once ---------------------------------------------------------------

def test_compiled_path_is_built_once_and_says_how_it_samples():
    from torch._dynamo.testing import CompileCounter
    counter = CompileCounter()
    m = Eps()
    kw = dict(schedule=SCHED, backend="reference", compile={"backend": counter})
    before = cache.cache_info()
    ddpm_fast.sample(m, (3, 1, 3, 3), seed=1, **kw)
    frames = counter.frame_count
    assert frames >= 2                              # the model and the reference step
    info = cache.cache_info()
    assert info["builds"] == before["builds"] + 1 and info["captures"] == before["captures"]
    assert info["runners"] == [{"kind": "loop", "compiled model": True, "compiled step": True,
                                "step backend": "reference"}]
    for seed in (2, 3):
        ddpm_fast.sample(m, (3, 1, 3, 3), seed=seed, **kw)
    assert counter.frame_count == frames               # nothing compiled again
    assert cache.cache_info()["builds"] == info["builds"]


@pytest.mark.skipif(ddpm_fast.backends()["cpp"] != "available", reason="needs the cpp backend")
def test_compiled_path_keeps_a_fused_step_as_one_op():
    ddpm_fast.sample(Eps(), (2, 1, 3, 3), schedule=SCHED, seed=1, backend="cpp", compile=DYNAMO_EAGER)
    (runner,) = cache.cache_info()["runners"]
    assert runner["step backend"] == "cpp" and runner["compiled step"] is False


class EagerReplay(graph.GraphSampler):
    needs_cuda = False

    def _record(self, fn):
        return fn


def test_graph_runner_captures_once_for_many_runs():
    from ddpm_fast.samplers.settings import make_spec, resolve
    sched, settings = resolve(SCHED, dict(sampler="ddpm"))
    spec = make_spec(sched, settings, (2, 1, 3, 3), torch.device("cpu"), torch.float32, 0, "reference", True)
    before = cache.cache_info()["captures"]
    runner = EagerReplay(spec, Eps(), None, None, "step")
    for seed in range(3):
        runner.run(seed, None, None)
    assert cache.cache_info()["captures"] == before + 1
    assert runner.describe()["kind"] == "graph (step)"


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mode", [True, "loop"])
def test_cuda_graph_is_captured_once_with_the_auto_backend(mode):
    m = Eps().cuda()
    kw = dict(schedule=SCHED, device="cuda", cuda_graph=mode)
    before = cache.cache_info()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # a failed capture would warn and fall back
        for seed in range(3):
            ddpm_fast.sample(m, (2, 1, 3, 3), seed=seed, **kw)
    info = cache.cache_info()
    assert info["captures"] == before["captures"] + 1 and info["builds"] == before["builds"] + 1
    (runner,) = info["runners"]
    assert runner["kind"] == f"graph ({'step' if mode is True else mode})"
    assert runner["step backend"] == auto_cuda_backend()


def test_more_model_shapes_than_dynamos_limit_still_sample(recwarn):
    """A compiled model's forward holds at most 8 compiled versions (Dynamo's cache_size_limit);
    the 9th shape's first step runs eagerly, and the steps after it must not skip the guards that
    send them to the eager forward too (Dynamo refuses: "Recompilation triggered with
    skip_guard_eval_unsafe stance"). Samples still equal the eager sampler's."""
    class Conv(torch.nn.Module):     # its own forward code object: its own 8 versions
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t):
            return 0.1 * self.conv(x)

    torch.manual_seed(0)
    model = Conv()
    kw = dict(steps=3, sampler="ddim", seed=0, backend="reference")
    for batch in range(1, 11):
        got = ddpm_fast.sample(model, (batch, 1, 4, 4), compile={"backend": "eager"}, **kw)
        torch.testing.assert_close(got, ddpm_fast.sample(model, (batch, 1, 4, 4), **kw), rtol=0, atol=0)
