"""The fast sampler's runners: a Python loop over an eager or compiled step (``LoopSampler``),
and CUDA graphs (``GraphSampler``): one step captured once and replayed T times ("step"), or
all T steps captured as one graph ("loop").

GraphSampler's static buffers, allocated once per cache entry (ddpm_fast/samplers/cache.py):
    x      (B, ...) spec.dtype   the state x_t, updated in place by every step
    i      int64 [1]             step counter; step i reads plan.timesteps[i] on the device
    seed   int64 [2]             (key, sample offset), filled before each run: a new seed draws
                                 fresh noise and each chunk of a batch (or shard) its own samples'
                                 noise from the same capture (the ops add seed[1] to the sample
                                 index on the device: docs/ops_contract.md, "Counter-based noise")
    bad    int64 [1]             first timestep with a non-finite model output (-1: none)
    kwargs                       static copies of the model's tensor kwargs (class labels, ...)
A run fills seed, writes x_T into x (drawn on the device from the seed, or the user's x_T),
resets i and bad, and replays; nothing waits for the host until the caller reads the result.

Warm-up and capture never touch the user's RNG (``torch.random.fork_rng``, stable-fast #112).
A graph keeps pointers to the model's parameters: the cache key holds their storages, so
replacing a tensor recaptures, and updating one in place is seen by the next replay.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch

from ..noise import seed_to_int64
from . import cache
from .adapters import call_model, check_output, model_input_dtype
from .chunks import start_noise
from .compiled import compile_fn, compiled_model, make_advance_, step_backend, step_tables
from .guidance import check_halves_differ
from .loop import SamplerSpec

WARMUP_STEPS = 2   # on a side stream before capture: lazy inits (cuBLAS handles, compilation)
GRAPH_MODES = ("step", "loop")


def fill_seed(buf: torch.Tensor, seed: Any, offset: int) -> torch.Tensor:
    """Write (key, sample offset) into the int64 [2] device buffer ``buf`` with fill/copy kernels
    (torch.tensor(v, device=...) copies from pageable host memory, which synchronises). ``seed``:
    an int, or an int64 tensor [] / [1] (the key) or [2] (key, offset: its offset is added)."""
    if isinstance(seed, torch.Tensor):
        from ..ops.validate import as_seed
        s = as_seed(seed, buf.device)
        if s.numel() == 2:
            buf.copy_(s)
            buf[1:].add_(offset)
            return buf
        buf[0].copy_(s)
    else:
        buf[0].fill_(seed_to_int64(seed))
    buf[1].fill_(offset)
    return buf


def seed_buffer(seed: Any, offset: int, device: torch.device) -> torch.Tensor:
    """A fresh int64 [2] device tensor (key, sample offset) of ``seed`` (see ``fill_seed``)."""
    return fill_seed(torch.empty(2, dtype=torch.int64, device=device), seed, offset)


# Backend for the fused ops *inside a compiled model*, where the global default is "auto".
# On CPU Inductor's own code for the reference GroupNorm+SiLU (fused with its neighbours) beats
# calling the C++ op from compiled code. Measured on the 2-core dev machine (quiet), UNet.tiny
# 16x16 forward, compiled with reference vs C++ norms: 1 thread, batch 1 5.1 vs 6.1 ms, batch 64
# 116 vs 133 ms; 2 threads 4.4 vs 7.0 ms, 58 vs 69 ms (eager C++: 7.5 ms, 85 ms).
# Again after the C++ GroupNorm went SIMD (2026-12-07, AVX-512 EPYC, 1 thread, load ~2): the
# demo UNet (ch 16) on its guided batch of 40, compiled, 19.7 ms with reference norms vs 25.6 ms.
# On CUDA the question is open (a GPU session measures it), so the default stands there.
COMPILED_MODEL_BACKEND = {"cpu": "reference"}


class _Model:
    """``model(x, t) -> tensor`` over the user's model (compiled or not) with live kwargs;
    ``guided``: on the 2B batch of classifier-free guidance (adapters.call_model)."""

    def __init__(self, model: Callable, compile_kwargs: Optional[dict], kwargs: dict,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32,
                 guided: bool = False, model_dtype: Optional[torch.dtype] = None):
        self.net = (compiled_model(model, compile_kwargs, device.type if device is not None else "cpu")
                    if compile_kwargs is not None else model)
        self.dtype = model_input_dtype(model, dtype)
        self.kwargs = kwargs
        self.guided = guided
        self.model_dtype = model_dtype   # autocast around the (compiled) model: sample(model_dtype=)
        self.backend = None
        if compile_kwargs is not None and device is not None:
            from ..ops import get_backend
            if get_backend() == "auto":
                self.backend = COMPILED_MODEL_BACKEND.get(device.type)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.backend is None:
            return call_model(self.net, x.to(self.dtype), t, self.kwargs, self.guided, self.model_dtype)
        from ..ops import use_backend
        with use_backend(self.backend):
            return call_model(self.net, x.to(self.dtype), t, self.kwargs, self.guided, self.model_dtype)


class LoopSampler:
    """T calls of (model, step) from Python, compiled when ``compile_kwargs`` is given.
    Used on CPU, on CUDA with cuda_graph=False, and as the fallback when capture fails.
    Each run owns its state buffer x (returned to the caller), written in place by every step."""

    def __init__(self, spec: SamplerSpec, model: Callable, model_kwargs: Optional[dict],
                 compile_kwargs: Optional[dict]):
        self.spec = spec
        self.compiled = compile_kwargs is not None
        self.model = _Model(model, compile_kwargs, dict(model_kwargs or {}), spec.device, spec.dtype,
                            spec.guided, spec.model_dtype)
        self.ts_b, ps_b = step_tables(spec)
        advance_ = make_advance_(spec, self.ts_b, ps_b)
        # A fused backend's step is one kernel already: compiling around it only adds Dynamo's
        # per-call guard checks (~0.1 ms). The reference step (Philox in integer ops) gains 10x.
        compile_step = compile_kwargs is not None and step_backend(spec) == "reference"
        self.advance_ = compile_fn(advance_, compile_kwargs) if compile_step else advance_
        self.info = {"kind": "loop", "compiled model": self.compiled, "compiled step": compile_step,
                     "step backend": step_backend(spec)}
        with torch.random.fork_rng(devices=_cuda_devices(spec.device)), torch.no_grad():
            # compiles now (not inside the user's loop), and checks the model's output shape
            x = torch.zeros(spec.shape, dtype=spec.dtype, device=spec.device)
            self._step(x, _zeros(spec.device), seed_buffer(0, 0, spec.device), _minus1(spec.device),
                       spec.new_history(), check=True)

    def describe(self) -> dict:
        return dict(self.info)

    def _step(self, x, i, seed, bad, history=None, check: bool = False):
        """One step on the run's buffers x, i, bad (updated in place)."""
        out = self.model(x, self.ts_b.index_select(0, i).reshape(x.shape[0]))
        if check:
            check_output(out, x, self.spec.learned_variance is not None, self.spec.guided)
            if self.spec.guided:
                check_halves_differ(out, self.model.kwargs)
        self.advance_(x, out, i, seed, bad, history)

    def run(self, seed: Any, x_T: Optional[torch.Tensor], model_kwargs: Optional[dict],
            progress: bool = False, intermediate_every: int = 0, offset: int = 0):
        """Sample once, the samples counted from ``offset`` (a chunk's global sample offset,
        passed on the device: the compiled step is the same for every offset). Returns (x_0,
        intermediates, bad: device int64 [1])."""
        spec = self.spec
        self.model.kwargs.update(model_kwargs or {})
        seed_t = seed_buffer(seed, offset, spec.device)
        x = start_noise(spec, seed_t, x_T)   # this run's own buffer: the steps write it in place
        i, bad = _zeros(spec.device), _minus1(spec.device)
        history = spec.new_history()
        inters = []
        with contextlib.ExitStack() as stack:
            for k in _steps(len(spec.plan), progress, spec.sampler):
                try:
                    self._step(x, i, seed_t, bad, history)
                except RuntimeError as e:
                    if not _guards_were_needed(e, stack):
                        raise
                    self._step(x, i, seed_t, bad, history)   # nothing ran: the guards fail first
                if k == 0 and self.compiled:
                    stack.enter_context(_skip_guard_eval())
                if intermediate_every and (k + 1) % intermediate_every == 0:
                    inters.append(x.clone())
        return x, inters, bad


def _guards_were_needed(error: RuntimeError, stack: contextlib.ExitStack) -> bool:
    """True (and the guard checks back on) when skipping them made Dynamo refuse a call: the
    first step ran eagerly because the model's forward already holds Dynamo's limit of compiled
    versions (8 shapes in one process), so steps 2..T have no compiled version to skip to."""
    if "skip_guard_eval_unsafe" not in str(error):
        return False
    stack.close()
    return True


def _skip_guard_eval():
    """Steps 2..T of one run call the compiled model and step with inputs of the first step's
    shapes, dtypes and strides, the same parameters and kwargs (our cache key holds what the
    compile depends on), so Dynamo's per-call guard checks can be skipped: ~0.5 ms of a 5 ms
    UNet.tiny batch-1 CPU step (measured, 1 thread). Needs torch >= 2.6; a no-op before."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        return contextlib.nullcontext()
    try:
        return set_stance("default", skip_guard_eval_unsafe=True)
    except TypeError:
        return contextlib.nullcontext()


class GraphSampler:
    """A captured sampler for one (model, spec, kwargs layout); see the module docstring.

    ``_record(fn)`` is the only CUDA-specific seam: it captures ``fn`` and returns its replay.
    (Tests on CPU subclass it with ``_record = lambda self, fn: fn`` to check the buffer and
    replay bookkeeping without a GPU.)"""

    needs_cuda = True

    def __init__(self, spec: SamplerSpec, model: Callable, model_kwargs: Optional[dict],
                 compile_kwargs: Optional[dict], mode: str = "step", intermediate_every: int = 0):
        if self.needs_cuda and spec.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {spec.device}")
        if mode not in GRAPH_MODES:
            raise ValueError(f"graph mode must be one of {GRAPH_MODES}, got {mode!r}")
        self.spec, self.mode = spec, mode
        self.n_steps = len(spec.plan)
        self.every = intermediate_every if mode == "loop" else 0
        dev = spec.device
        self.x = torch.zeros(spec.shape, dtype=spec.dtype, device=dev)
        self.i = _zeros(dev)
        self.seed = torch.zeros(2, dtype=torch.int64, device=dev)   # (key, sample offset)
        self.bad = _minus1(dev)
        self.history = spec.new_history()   # a multistep solver's x0 ring (None otherwise)
        static_kwargs = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
                         for k, v in (model_kwargs or {}).items()}
        self.model = _Model(model, compile_kwargs, static_kwargs, spec.device, spec.dtype, spec.guided,
                            spec.model_dtype)
        n_inter = self.n_steps // self.every if self.every else 0
        self.inter = torch.zeros((n_inter, *spec.shape), dtype=spec.dtype, device=dev) if n_inter else None
        self.ts_b, ps_b = step_tables(spec)
        advance_ = make_advance_(spec, self.ts_b, ps_b)   # the fused step records the NaN itself
        self.advance_ = compile_fn(advance_, compile_kwargs) if compile_kwargs is not None else advance_
        self.info = {"kind": f"graph ({mode})", "compiled model": compile_kwargs is not None,
                     "compiled step": compile_kwargs is not None, "step backend": step_backend(spec)}
        self.graph = None
        self._replay = self._capture()

    def describe(self) -> dict:
        return dict(self.info)

    def _body(self) -> None:
        """One step on the static buffers: what the graph records."""
        out = self.model(self.x, self.ts_b.index_select(0, self.i).reshape(self.x.shape[0]))
        self.advance_(self.x, out, self.i, self.seed, self.bad, self.history)

    def _loop_body(self) -> None:
        """All steps, copying x into the intermediates buffer every ``every`` steps."""
        for k in range(self.n_steps):
            self._body()
            if self.every and (k + 1) % self.every == 0:
                self.inter[(k + 1) // self.every - 1].copy_(self.x)

    def _capture(self) -> Callable[[], None]:
        dev = self.spec.device
        with torch.random.fork_rng(devices=_cuda_devices(dev)), torch.no_grad(), on_device(dev):
            side = torch.cuda.Stream(dev) if dev.type == "cuda" else None
            if side is not None:
                side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for _ in range(WARMUP_STEPS):      # compiles, autotunes, creates cuBLAS handles
                    self._reset()
                    out = self.model(self.x, self.ts_b.index_select(0, self.i).reshape(self.x.shape[0]))
                    check_output(out, self.x, self.spec.learned_variance is not None, self.spec.guided)
                    if self.spec.guided:
                        check_halves_differ(out, self.model.kwargs)
                    self._body()
            if side is not None:
                torch.cuda.current_stream(dev).wait_stream(side)
            self._reset()
            replay = self._record(self._body if self.mode == "step" else self._loop_body)
            cache.count("captures")
            return replay

    def _record(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Capture ``fn`` as a CUDA graph; returns its replay.

        The capture runs on a stream of the sampler's device, with that device current:
        ``torch.cuda.graph``'s default stream is one class-level stream made on whichever device
        was current at its first use, so with the model on cuda:1 and cuda:0 current the
        kernels would be issued outside the capture."""
        dev = self.spec.device
        with on_device(dev):
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(dev)):
                fn()
        return self.graph.replay

    def _reset(self) -> None:
        self.x.zero_()
        self.i.zero_()
        self.bad.fill_(-1)
        if self.history is not None:
            self.history.zero_()

    def run(self, seed: Any, x_T: Optional[torch.Tensor], model_kwargs: Optional[dict],
            progress: bool = False, intermediate_every: int = 0, offset: int = 0):
        """Sample once, the samples counted from ``offset`` (a chunk's global sample offset:
        every chunk replays the one capture). Returns (x_0: a fresh tensor, intermediates, bad:
        device int64 [1])."""
        spec = self.spec
        fill_seed(self.seed, seed, offset)   # fill kernels: no host copy, no sync
        for k, v in (model_kwargs or {}).items():
            if isinstance(v, torch.Tensor):
                self.model.kwargs[k].copy_(v)
        with on_device(spec.device):   # a graph replays on the current device's current stream
            return self._run(x_T, progress, intermediate_every)

    def _run(self, x_T, progress, intermediate_every):
        spec = self.spec
        self.x.copy_(spec.initial_noise(self.seed) if x_T is None else x_T)
        self.i.zero_()
        self.bad.fill_(-1)
        if self.history is not None:
            self.history.zero_()
        inters = []
        if self.mode == "loop":
            self._replay()
            if progress:
                from tqdm.auto import tqdm
                with tqdm(total=self.n_steps, desc=f"{spec.sampler} sampling (one CUDA graph)",
                          unit="step") as bar:
                    bar.update(self.n_steps)
            if self.inter is not None and intermediate_every:
                inters = [x.clone() for x in self.inter]
        else:
            for k in _steps(self.n_steps, progress, spec.sampler, " (CUDA graph)"):
                self._replay()
                if intermediate_every and (k + 1) % intermediate_every == 0:
                    inters.append(self.x.clone())
        return self.x.clone(), inters, self.bad.clone()

    def release(self) -> None:
        """Free the graph and its buffers (the cache calls this when it evicts the entry)."""
        if self.graph is not None:
            self.graph.reset()
        self.graph = self._replay = None
        self.x = self.inter = self.advance_ = self.model = self.history = None


def _zeros(device) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.int64, device=device)


def _minus1(device) -> torch.Tensor:
    return torch.full((1,), -1, dtype=torch.int64, device=device)


def on_device(device: torch.device):
    """``device`` made the current CUDA device for the block (a no-op for other devices)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _cuda_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _steps(n: int, progress: bool, sampler: str, what: str = ""):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm
    return tqdm(range(n), desc=f"{sampler} sampling{what}", unit="step")
