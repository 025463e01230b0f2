"""The sampler's step as functions of device tensors, eager or ``torch.compile``d.

Per step i (the counter ``i`` is an int64 [1] device tensor):

    t = timesteps_b[i]                         # (B,) int64, read on the device
    out = model(x, t)                          # the user's model, compiled or not
    x, i, bad = advance(x, out, i, seed, bad)  # fused step + NaN record + i += 1

``bad`` (int64 [1]) is the first timestep whose model output was not finite (-1 while all
were), reported once after the loop. Nothing here synchronises with the host, so the same code
runs eagerly, compiled, and inside a captured CUDA graph (docs/pitfalls.md, Speed).

Timesteps go to the model and to the fused step as int64 [B] (the contract allows [] or [B]):
indexing a table with a 0-dim *device* tensor (``table[t, col]``) makes PyTorch call ``.item()``
and sync; a [B] index is a gather.

Compiling: the model and the step are compiled separately, so one compiled model serves the
DDPM and DDIM samplers and every batch chunk; the step closure gets a fresh code object per
cache entry (see ``compile_fn``).
"""
from __future__ import annotations

import types
from typing import Any, Callable, Optional, Union

import torch

from ..ops.enums import VARIANCE_TYPES
from .loop import SamplerSpec

_counter = [0]


def step_tables(spec: SamplerSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, prev) as int64 [steps, B] device tables: row i holds step i's t per sample."""
    ts, ps = spec.plan.device_tensors(spec.device)
    B = spec.shape[0]
    return ts[:, None].expand(-1, B).contiguous(), ps[:, None].expand(-1, B).contiguous()


def make_advance(spec: SamplerSpec, ts_b: torch.Tensor, ps_b: torch.Tensor) -> Callable:
    """``advance(x, out, i, seed, bad, history) -> (x_prev, i + 1, bad)``, pure except for a
    multistep solver's x0 ring ``history`` (None for DDPM/DDIM), written in place."""
    B = spec.shape[0]
    check_nan = spec.check_nan

    def ddpm_fast_advance(x, model_out, i, seed, bad, history=None):
        t = ts_b.index_select(0, i).reshape(B)
        t_prev = ps_b.index_select(0, i).reshape(B)
        if check_nan:
            first = ~torch.isfinite(model_out).all() & (bad < 0)
            bad = torch.where(first, t[:1], bad)
        return spec.step(x, model_out, t, t_prev, seed, i, history), i + 1, bad

    return ddpm_fast_advance


def make_advance_inplace(spec: SamplerSpec, ts_b: torch.Tensor, ps_b: torch.Tensor,
                         step_out: Optional[Callable] = None) -> Callable:
    """``advance_(x, out, i, seed, bad)``: the same step writing into the static buffers x, i,
    bad (what a CUDA graph records). ``step_out`` is a backend's ``reverse_step_out``: x_{t-1}
    is then written straight into x (the contract allows out = x_t), saving a copy."""
    B = spec.shape[0]
    check_nan = spec.check_nan
    var = VARIANCE_TYPES[spec.variance_type]

    def ddpm_fast_advance_(x, model_out, i, seed, bad, history=None):
        t = ts_b.index_select(0, i).reshape(B)
        if check_nan:
            first = ~torch.isfinite(model_out).all() & (bad < 0)
            bad.copy_(torch.where(first, t[:1], bad))
        if step_out is not None:
            step_out(x, model_out, t, spec.table, None, seed, spec.sample_offset, spec.pred_code, var,
                     spec.clip_denoised, spec.clip_range, spec.fused_guidance, x)
        else:
            t_prev = ps_b.index_select(0, i).reshape(B)
            x.copy_(spec.step(x, model_out, t, t_prev, seed, i, history))
        i.add_(1)

    return ddpm_fast_advance_


def step_backend(spec: SamplerSpec) -> Optional[str]:
    """The backend whose implementation runs this spec's step ("reference", "cpp", ...)."""
    from ..ops import dispatch
    op = spec.step_op
    return dispatch.backend_of(op, spec.impls.get(op))


def step_out_impl(spec: SamplerSpec) -> Optional[Callable]:
    """The ``reverse_step_out`` of the backend that runs this spec's reverse_step, if it has one."""
    if spec.sampler != "ddpm" or spec.needs_pre_step or spec.learned_variance is not None:
        return None
    if spec.guided and spec.fused_guidance is None:   # the combine runs before the step
        return None
    from ..ops import dispatch
    return dispatch.implementations("reverse_step_out").get(step_backend(spec))


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
    (a new shape, seed-independent but spec-dependent) would silently run eagerly."""
    _counter[0] += 1
    name = f"{fn.__code__.co_name}_{_counter[0]}"
    code = renamed_code(fn.__code__, name)
    fresh = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    return torch.compile(fresh, **kwargs)


def renamed_code(code: types.CodeType, name: str) -> types.CodeType:
    """A copy of ``code`` named ``name``. Python 3.11 added ``co_qualname`` (what tracebacks
    and Dynamo's logs print); before it only ``co_name`` exists."""
    if hasattr(code, "co_qualname"):
        return code.replace(co_name=name, co_qualname=name)
    return code.replace(co_name=name)


def compiled_model(model: Any, kwargs: dict) -> Callable:
    """``torch.compile(model)``. A new wrapper per cache entry is cheap: Dynamo keeps the compiled
    code on the model's forward, so the DDPM and DDIM samplers and every chunk share one compile
    as long as Dynamo's own guards (shapes, dtypes, train/eval) pass."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        return model  # the user compiled it already
    return torch.compile(model, **kwargs)
