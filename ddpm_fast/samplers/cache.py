"""A small cache of compiled / graph-captured samplers, and the key that decides reuse.

A captured CUDA graph holds raw pointers to the model's parameters, and a compiled step is
specialised to shapes and dtypes. So an entry is reused only while everything it baked in is
unchanged: the model object, the *storage* of every parameter and buffer (pointer and dtype, so
``load_state_dict(..., assign=True)`` or swapping in EMA tensors rebuilds it; in-place updates
such as ``p.copy_(ema)`` or an optimizer step keep the pointers and are picked up, stable-fast
#141/#143), the train/eval flags, the sample shape, dtype, device, schedule table, sampler
configuration, model kwargs' layout and the compile/graph mode (not the sample offset: a runner
reads its chunk's offset on the device, in the seed buffer (key, offset) of samplers/graph.py, so
the chunks of a batch, and shards at any offset, replay one build per chunk shape). When Inductor
froze the weights into the compiled model (``compile={"options": {"freezing": True}}``) the
key also holds their version counters: an in-place update then rebuilds (compiled.py,
``_frozen_model``).

Every build is logged (logger ``ddpm_fast.samplers``); a *re*build for a model that was built
before warns once per changed field (diffusers #5495: say when a recompile happens).
"""
from __future__ import annotations

import hashlib
import logging
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable, Optional

import torch

log = logging.getLogger("ddpm_fast.samplers")

MAX_ENTRIES = 8          # each graph entry holds static buffers + a memory pool: keep few
_entries: "OrderedDict[tuple, Any]" = OrderedDict()
_last_key_by_model: dict[int, tuple] = {}  # id(model) -> (weakref to it, fields of its newest key)
_warned: set[tuple] = set()
_events: dict[str, int] = {"builds": 0, "captures": 0}  # since import (clear_cache keeps them)


def count(event: str) -> None:
    """Record one build or CUDA-graph capture (cache_info reports the totals)."""
    _events[event] += 1


def model_fingerprint(model: Any) -> tuple:
    """(id, parameter/buffer storages, train flags) of the model: what a capture depends on.

    Parameters are read by pointer, so replacing a tensor changes the fingerprint, updating it
    in place does not. A plain callable is keyed by its identity only (we cannot see its
    weights: after swapping the weights a closure reads, call ``clear_cache()``)."""
    if isinstance(model, torch.nn.Module):
        tensors = tuple((t.data_ptr(), t.dtype, tuple(t.shape))
                        for t in (*model.parameters(), *model.buffers()))
        modes = tuple(m.training for m in model.modules())
        return (id(model), tensors, modes)
    return (id(model), (), ())


def schedule_fingerprint(schedule) -> str:
    """A digest of the schedule's float64 table, read from its CPU copy (no device sync): two
    equal schedules (``schedule=None`` builds a fresh linear one per call) share entries."""
    table = schedule.table("cpu")
    return hashlib.blake2b(table.contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def make_key(model, spec, schedule_digest: str, kwargs_layout: tuple, mode: tuple,
             weight_versions: tuple = ()) -> dict:
    """The cache key as named fields (the names appear in the rebuild warning).
    ``weight_versions``: the parameters' version counters when the compile froze the weights
    (compiled.weight_versions), so that an in-place update rebuilds; () otherwise."""
    from ..ops import get_backend
    if spec.sample_offset:   # it would be baked into the build and ignored by the key
        raise ValueError("a cached sampler's spec must leave its sample offset to the seed buffer "
                         "(samplers/chunks.py runner_spec)")
    ident, tensors, modes = model_fingerprint(model)
    plan = spec.plan
    return {
        "model": ident,
        "parameters": tensors,
        "frozen weights' versions": weight_versions,
        "train/eval mode": modes,
        "shape": spec.shape,
        "dtype": spec.dtype,
        "model dtype": spec.model_dtype,
        "device": str(spec.device),
        "schedule": schedule_digest,
        "sampler": (spec.sampler, plan.timesteps, plan.prev, spec.prediction_type, spec.variance_type,
                    spec.clip_denoised, spec.clip_range, spec.eta, spec.final_alpha_bar, spec.check_nan,
                    spec.threshold, spec.rederive_eps, spec.learned_variance, spec.guidance, spec.solver),
        "backend": (spec.backend, get_backend()),
        "model_kwargs": kwargs_layout,
        "mode": mode,
    }


def kwargs_layout(model_kwargs: Optional[dict]) -> tuple:
    """Tensors by (shape, dtype, device); other values by repr (they are baked into the trace)."""
    out = []
    for k, v in sorted((model_kwargs or {}).items()):
        if isinstance(v, torch.Tensor):
            out.append((k, "tensor", tuple(v.shape), v.dtype, str(v.device)))
        else:
            out.append((k, "value", repr(v)))
    return tuple(out)


def get_or_build(model: Any, key: dict, build: Callable[[], Any], what: str, announce: bool = True) -> Any:
    """The cached entry for ``key``, or ``build()`` (logged; a rebuild warns once, unless
    ``announce`` is False: the 2nd, 3rd... chunk of one call is an expected build)."""
    flat = tuple(key.values())
    entry = _entries.get(flat)
    if entry is not None:
        _entries.move_to_end(flat)
        return entry
    _say_rebuild(model, key, what, announce)
    entry = build()
    count("builds")
    _entries[flat] = entry
    try:
        ref = weakref.ref(model)
    except TypeError:
        ref = None
    _last_key_by_model[key["model"]] = (ref, key)
    while len(_entries) > MAX_ENTRIES:
        _, old = _entries.popitem(last=False)
        release = getattr(old, "release", None)
        if release is not None:
            release()
    return entry


def _say_rebuild(model: Any, key: dict, what: str, announce: bool) -> None:
    ref, prev = _last_key_by_model.get(key["model"], (None, None))
    if prev is not None and ref is not None and ref() is not model:
        prev = None  # another object that got the same id
    if prev is None:
        log.info("ddpm_fast: %s the sampler for shape %s on %s (first use)", what, key["shape"], key["device"])
        return
    changed = [name for name in key if key[name] != prev[name]]
    detail = ", ".join(changed) or "evicted from the cache"
    log.info("ddpm_fast: %s the sampler again: %s changed", what, detail)
    tag = (what, tuple(changed))
    if announce and tag not in _warned:
        _warned.add(tag)
        hint = (" (a parameter tensor was replaced, e.g. load_state_dict(assign=True) or EMA "
                "weights swapped in: update weights in place with p.copy_(new) to keep the "
                "captured sampler)") if "parameters" in changed else ""
        field = "frozen weights' versions"
        if field in changed and key[field] and prev[field]:   # both froze: an in-place update
            hint = (" (Inductor froze the weights into the compiled model, compile={'options': "
                    "{'freezing': True}}: an in-place update compiles afresh; compile without "
                    "freezing to keep the compiled sampler across weight updates)")
        warnings.warn(f"ddpm_fast: {what} the sampler again because {detail} changed{hint}",
                      RuntimeWarning, stacklevel=4)


def clear_cache() -> None:
    """Drop every cached compiled/captured sampler (frees their static buffers and graphs)."""
    while _entries:
        _, old = _entries.popitem()
        release = getattr(old, "release", None)
        if release is not None:
            release()
    _last_key_by_model.clear()
    _warned.clear()


def cache_info() -> dict:
    """What the fast sampler holds and has done: ``entries`` cached now (``max_entries`` at
    most), ``builds`` and ``captures`` since import (a second call with the same model, shape
    and settings adds to neither), and ``runners``: how each cached entry samples (its kind,
    compiled or not, and the backend of its fused step), newest last."""
    runners = [getattr(e, "describe", lambda: {})() for e in _entries.values()]
    return {"entries": len(_entries), "max_entries": MAX_ENTRIES, **_events, "runners": runners}
