"""The sampler's step as functions of device tensors, eager or ``torch.compile``d.

Per step i (the counter ``i`` is an int64 [1] device tensor):

    t = timesteps_b[i]                         # (B,) int64, read on the device
    out = model(x, t)                          # the user's model, compiled or not
    advance_(x, out, i, seed, bad)             # x, bad, i updated in place: fused step + NaN record

``bad`` (int64 [1]) is the first timestep whose model output was not finite (-1 while all
were), recorded by the fused step kernel itself (samplers/stepper.py) and reported once after
the loop. Nothing here synchronises with the host, so the same code
runs eagerly, compiled, and inside a captured CUDA graph (docs/pitfalls.md, Speed).

Timesteps go to the model and to the fused step as int64 [B] (the contract allows [] or [B]):
indexing a table with a 0-dim *device* tensor (``table[t, col]``) makes PyTorch call ``.item()``
and sync; a [B] index is a gather.

Compiling: the model and the step are compiled separately, so one compiled model serves the
DDPM and DDIM samplers and every batch chunk; the step closure gets a fresh code object per
cache entry (see ``compile_fn``).
"""
from __future__ import annotations

import functools
import os
import types
import warnings
import weakref
from typing import Any, Callable, Optional, Union

import torch

from .attention_pass import with_attention_pass
from .loop import SamplerSpec
from .stepper import make_step_

_counter = [0]


def step_tables(spec: SamplerSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, prev) as int64 [steps, B] device tables: row i holds step i's t per sample."""
    ts, ps = spec.plan.device_tensors(spec.device)
    B = spec.shape[0]
    return ts[:, None].expand(-1, B).contiguous(), ps[:, None].expand(-1, B).contiguous()


def make_advance_(spec: SamplerSpec, ts_b: torch.Tensor, ps_b: torch.Tensor) -> Callable:
    """``advance_(x, out, i, seed, bad, history)``: one step writing into the buffers x (the state),
    i (the step counter, += 1) and bad (the NaN record; check_nan=False: not touched), and a
    multistep solver's x0 ring ``history`` (None for DDPM/DDIM). What a CUDA graph records and what
    the compiled loop runs. The step itself is samplers/stepper.py's: one fused out-variant that
    also records the NaN (plain DDPM/DDIM), or the general step with a separate record."""
    B = spec.shape[0]
    step_ = make_step_(spec)
    record = spec.check_nan
    uses_prev = spec.sampler != "ddpm" and not spec.multistep   # only DDIM reads t_prev

    def ddpm_fast_advance_(x, model_out, i, seed, bad, history=None):
        t = ts_b.index_select(0, i).reshape(B)
        t_prev = ps_b.index_select(0, i).reshape(B) if uses_prev else None
        step_(x, model_out, t, t_prev, seed, i, bad if record else None, history)
        i.add_(1)

    return ddpm_fast_advance_


def step_backend(spec: SamplerSpec) -> Optional[str]:
    """The backend whose implementation runs this spec's step ("reference", "cpp", ...)."""
    from ..ops import dispatch
    op = spec.step_op
    return dispatch.backend_of(op, spec.impls.get(op))


# torch.compile modes under which Inductor captures CUDA graphs of its own
INDUCTOR_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_kwargs(compile: Union[bool, str, dict], capturing: bool, device_type: str = "cpu") -> dict:
    """torch.compile kwargs from ``compile=``: True (default mode), a mode name, or a dict.

    When we capture the CUDA graph ourselves Inductor must not add its own cudagraphs:
    "reduce-overhead" becomes "default" and "max-autotune" "max-autotune-no-cudagraphs".
    Without our capture (cuda_graph=False) on CUDA, Inductor's own graphs are refused: their
    outputs live in Inductor's graph pool and the next replay overwrites them, so the sample
    handed back (and x_t between steps) would change under the caller."""
    if isinstance(compile, dict):
        kwargs = dict(compile)
    elif isinstance(compile, str):
        kwargs = {"mode": compile}
    else:
        kwargs = {}
    kwargs.setdefault("dynamic", False)   # one shape per cache entry: the key holds the shape
    mode = kwargs.get("mode")
    if capturing and mode in INDUCTOR_CUDAGRAPH_MODES:
        kwargs["mode"] = "max-autotune-no-cudagraphs" if mode == "max-autotune" else "default"
    elif not capturing and device_type == "cuda" and _inductor_cudagraphs(kwargs):
        raise ValueError(
            f"compile={compile!r} with cuda_graph=False: Inductor would capture CUDA graphs of its "
            "own, whose output buffers the next call overwrites. Use cuda_graph=True (ddpm_fast "
            "captures the loop; Inductor's graphs are switched off), or compile=True / "
            "'max-autotune-no-cudagraphs' with cuda_graph=False")
    return kwargs


def _inductor_cudagraphs(kwargs: dict) -> bool:
    options = kwargs.get("options") or {}
    return kwargs.get("mode") in INDUCTOR_CUDAGRAPH_MODES or bool(options.get("triton.cudagraphs"))


def compile_fn(fn: Callable, kwargs: dict) -> Callable:
    """``torch.compile`` of a closure, with a fresh code object (``<name>_<n>``).

    Dynamo keeps compiled variants on the function's code object, at most ``cache_size_limit``
    (8) per object; our closures share one code object, so without this the ninth cache entry
    (a new shape, seed-independent but spec-dependent) would silently run eagerly.
    Inductor's ``freezing`` option is for the model (``compiled_model``); the step has no
    weights to freeze, so it is dropped here."""
    _counter[0] += 1
    name = f"{fn.__code__.co_name}_{_counter[0]}"
    code = renamed_code(fn.__code__, name)
    fresh = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    return torch.compile(fresh, **_without_freezing(kwargs))


def renamed_code(code: types.CodeType, name: str) -> types.CodeType:
    """A copy of ``code`` named ``name``. Python 3.11 added ``co_qualname`` (what tracebacks
    and Dynamo's logs print); before it only ``co_name`` exists."""
    if hasattr(code, "co_qualname"):
        return code.replace(co_name=name, co_qualname=name)
    return code.replace(co_name=name)


def freezes_weights(kwargs: Optional[dict]) -> bool:
    """Whether ``compile=`` kwargs ask Inductor to freeze the model's weights
    (``{"options": {"freezing": True}}``)."""
    return bool(((kwargs or {}).get("options") or {}).get("freezing"))


def weight_versions(model: Any) -> tuple:
    """The version counters of the model's parameters and buffers: every in-place update under
    autograd's tracking (``p.copy_``, ``p.add_``, an optimizer step, ``load_state_dict``) bumps
    them; writes through ``p.data`` do not."""
    if not isinstance(model, torch.nn.Module):
        return ()
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


def compiled_model(model: Any, kwargs: dict, device_type: str = "cpu") -> Callable:
    """``torch.compile(model)``. A new wrapper per cache entry is cheap: Dynamo keeps the compiled
    code on the model's forward, so the DDPM and DDIM samplers and every chunk share one compile
    as long as Dynamo's own guards (shapes, dtypes, train/eval) pass.

    With ``options={"freezing": True}`` the weights are compiled in as constants (see
    ``_frozen_model``). On CPU, Inductor gets the attention pass (samplers/attention_pass.py:
    small-head attention to ddpm_fast's kernel), added here, after ``kwargs`` made the cache keys."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        return model  # the user compiled it already
    if device_type == "cpu":
        warn_if_capability_shares_cache()
    if freezes_weights(kwargs):
        return _frozen_model(model, _without_freezing(kwargs), device_type)
    return torch.compile(model, **with_attention_pass(kwargs, device_type))


def warn_if_capability_shares_cache() -> None:
    """Warn when ATEN_CPU_CAPABILITY is set and Inductor uses its default on-disk cache.

    Inductor generates its CPU kernels for the vector width that ATEN_CPU_CAPABILITY picks, but
    its FX graph cache does not key on it (torch 2.13, measured on an AVX-512 CPU): a process
    forcing avx2 (or default) loaded the kernels another process had generated for AVX-512,
    compiled them with the narrower flags, and got wrong samples (a NaN record naming timestep
    38 instead of 17) or heap corruption ("free(): invalid pointer"). A cache directory of its
    own per capability avoids it."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    if not capability:
        return
    configured = os.environ.get("TORCHINDUCTOR_CACHE_DIR")   # read, not Inductor's cache_dir(): that creates it
    shared = configured is None
    if not shared:
        try:
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir
            shared = os.path.abspath(configured) == os.path.abspath(default_cache_dir())
        except ImportError:  # pragma: no cover — another torch's layout: a set variable is taken as private
            pass
    if shared:
        warnings.warn(
            f"ddpm_fast: ATEN_CPU_CAPABILITY={capability} is set and torch.compile uses Inductor's "
            "default cache directory, which does not tell capabilities apart (torch 2.13): kernels "
            "cached by a run under another capability can be reused and give wrong results. Set "
            "TORCHINDUCTOR_CACHE_DIR to a directory used only with this capability.",
            RuntimeWarning, stacklevel=3)


def _without_freezing(kwargs: dict) -> dict:
    """``kwargs`` less Inductor's ``freezing`` option (and less ``options`` if that was all:
    torch.compile refuses ``mode`` and ``options`` together)."""
    if "freezing" not in (kwargs.get("options") or {}):
        return kwargs
    options = {k: v for k, v in kwargs["options"].items() if k != "freezing"}
    out = {k: v for k, v in kwargs.items() if k != "options"}
    return {**out, "options": options} if options else out


# model -> {compile kwargs: (weight versions, compiled _call_model)}; weakly keyed, and the
# compiled function takes the model as an argument, so nothing here keeps a model alive.
_frozen: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _frozen_model(model: Any, kwargs: dict, device_type: str = "cpu") -> Callable:
    """The model compiled with Inductor's weight freezing: weights become constants of the
    compiled code (folded, and on CPU prepacked for oneDNN), so an in-place update no longer
    reaches it. The compile is kept per (model, kwargs, weight versions): an update that bumps
    a version (the sampler's cache key then holds the versions, samplers/cache.py) compiles
    afresh, on a new code object, so Dynamo cannot hand back the code of the old weights.

    Dynamo decides which tensors become constants while it traces, from the *global*
    ``torch._inductor.config.freezing`` (``options=`` reaches Inductor only after the trace,
    where it froze nothing: torch 2.13, measured), so every call sets it for its duration."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError("compile={'options': {'freezing': True}} needs an nn.Module model: "
                         "its weights' versions decide when the frozen compile is stale")
    flags = {"freezing": True}
    if any(t.dim() == 0 for t in (*model.parameters(), *model.buffers())):
        # Inductor writes a frozen 0-dim weight into the generated code as a literal, while its
        # FX graph cache keys frozen weights by shape and dtype only (torch 2.13,
        # _inductor/codecache.py: is_frozen_param and not can_inline_constant, which counts 1-D
        # tensors only): a cache hit would hand back the old value. Measured: after an in-place
        # update the recompiled sampler still used the old scalar. Such models compile uncached.
        flags["fx_graph_cache"] = False
    versions = weight_versions(model)
    per_model = _frozen.setdefault(model, {})
    tag = repr(sorted(kwargs.items()))
    held = per_model.get(tag)
    if held is None or held[0] != versions:
        held = (versions, compile_fn(_call_model, with_attention_pass(kwargs, device_type)))
        per_model[tag] = held
    return functools.partial(_call_frozen, held[1], model, flags)


def _call_model(model, *args, **kwargs):
    return model(*args, **kwargs)


def _call_frozen(fn: Callable, model: Any, flags: dict, *args, **kwargs):
    """``fn(model, ...)`` with Inductor's global config ``flags`` set for the call (plain
    attribute writes: ~18 us a pair on the 2-core machine under load, a ``config.patch``
    context ~170 us)."""
    import torch._inductor.config as config
    old = {k: getattr(config, k) for k in flags}
    for k, v in flags.items():
        setattr(config, k, v)
    try:
        return fn(model, *args, **kwargs)
    finally:
        for k, v in old.items():
            setattr(config, k, v)
