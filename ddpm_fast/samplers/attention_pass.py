"""The compiled sampler's attention on CPU: ATen's flash kernel replaced by ddpm_fast's small-head
kernel (``ddpm_fast::attention``, csrc/cpu/attention.cpp) where it is faster. The same pass then
routes 3x3 convolutions to ddpm_fast's Winograd kernel (samplers/conv_pass.py).

An Inductor post-grad pass (``post_grad_custom_post_pass``, added to the ``options`` of the model's
``torch.compile``) rewrites each ``aten._scaled_dot_product_flash_attention_for_cpu`` call, which
is what ``F.scaled_dot_product_attention`` lowers to on CPU, into ``ddpm_fast::attention`` when:
float32 CPU tensors, head dim <= ``MAX_HEAD_DIM``, no mask, no dropout, not causal, and only the
output is used (a training graph keeps the logsumexp for the backward: left alone). The new op has
the flash kernel's output layout ([B, H, Nq, D] over a [B, Nq, H, D] buffer), so the views Inductor
already planned on that output stay valid.

``MAX_HEAD_DIM``: per attention call, 1 thread, torch 2.13, AMD EPYC (AVX-512), process time
(docs/fast_sampler.md, "Attention"): [1, 8, 256, 8] 0.43 ms ours vs 0.99 ms ATen flash;
[1, 4, 256, 16] 0.32 vs 0.33 (a tie); [1, 2, 256, 32] 0.38 vs 0.25. Head dims up to 8 win.
"""
from __future__ import annotations

import math
import operator
from typing import Optional

import torch

from ..ops import dispatch
from . import conv_pass, fx_rewrite
from .conv_pass import route_conv3x3
from .fx_rewrite import call_before

MAX_HEAD_DIM = 8

_aten = torch.ops.aten
# torch builds without the CPU flash op have nothing to replace
_FLASH = getattr(getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None), "default", None)

try:  # torch >= 2.6: a pass with a uuid keeps Inductor's FX graph cache on
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
except ImportError:  # pragma: no cover — older torch: a plain callable (the cache is bypassed)
    CustomGraphPass, get_hash_for_files = object, None


def _eligible(node: torch.fx.Node) -> bool:
    q = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        return False
    dropout = node.args[3] if len(node.args) > 3 else node.kwargs.get("dropout_p", 0.0)
    causal = node.args[4] if len(node.args) > 4 else node.kwargs.get("is_causal", False)
    out = node.meta.get("val", (None,))[0]
    return (q.device.type == "cpu" and q.dtype == torch.float32 and q.shape[-1] <= MAX_HEAD_DIM
            and dropout == 0.0 and not causal and node.kwargs.get("attn_mask") is None
            and all(u.target is operator.getitem and u.args[1] == 0 for u in node.users)
            and isinstance(out, torch.Tensor) and out.stride() == _flash_layout(out.shape))


def _flash_layout(shape) -> tuple:
    """Strides of [B, H, Nq, D] over a contiguous [B, Nq, H, D] buffer: ATen's CPU flash output
    (torch 2.11-2.13) and ddpm_fast::attention's. Another torch's flash layout is left alone: the
    views Inductor planned on it would not fit the new op's output."""
    B, H, Nq, D = shape
    return (Nq * H * D, D, H * D, 1)


def route_attention(graph: torch.fx.Graph) -> int:
    """Replace every eligible CPU flash attention of ``graph`` by ``ddpm_fast::attention``; returns
    how many it replaced."""
    if _FLASH is None:
        return 0
    op = torch.ops.ddpm_fast.attention.default
    n = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _FLASH or not _eligible(node):
            continue
        q, k, v = node.args[:3]
        scale = node.kwargs.get("scale")
        scale = 1.0 / math.sqrt(q.meta["val"].shape[-1]) if scale is None else float(scale)
        # same shape, strides and dtype as flash's output (the op's fake)
        new = call_before(graph, node, op, (q, k, v, scale), node.meta["val"][0])
        for user in list(node.users):
            user.replace_all_uses_with(new)
            graph.erase_node(user)
        graph.erase_node(node)
        n += 1
    return n


class AttentionPass(CustomGraphPass):
    """``route_attention`` and ``conv_pass.route_conv3x3`` as Inductor's post-grad custom pass;
    its uuid (the hash of the files that rewrite) keys Inductor's FX graph cache."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        route_attention(graph)
        route_conv3x3(graph)

    def uuid(self) -> Optional[bytes]:
        return get_hash_for_files((__file__, conv_pass.__file__, fx_rewrite.__file__)) if get_hash_for_files is not None else None


PASS = AttentionPass()   # one instance: equal compile options give equal Dynamo backends


def routes_attention() -> bool:
    """Whether compiled CPU models get the pass: the process's backend for the fused ops on CPU
    resolves to the C++ extension (not under ``use_backend("reference")``, nor without it)."""
    try:
        impl = dispatch.implementation("attention", None, torch.device("cpu"))
    except dispatch.BackendUnavailableError:
        return False
    return dispatch.backend_of("attention", impl) == "cpp"


def with_attention_pass(kwargs: dict, device_type: str) -> dict:
    """``torch.compile`` kwargs for a model on ``device_type``, with the pass in Inductor's options
    on CPU. Inductor only (the default backend or "inductor"); a ``mode`` becomes its options
    (``torch._inductor.list_mode_options``: what torch.compile does with it, which refuses mode
    and options together); a post-grad pass of the caller's own is kept, and then no routing.

    With the pass, Inductor's ``size_asserts`` default to off (an option the caller gives wins):
    the compiled wrapper otherwise checks the size and stride of ~175 tensors (inputs,
    parameters, extern kernels' outputs) on every call of the dunet forward, ~7% of it (1 thread,
    AVX2 EPYC, docs/fast_sampler.md). The sampler is the only caller of this compile, and what
    those asserts would catch is checked anyway: Dynamo's guards check every input's size and
    stride on the first step of each run (steps 2..T reuse the same tensors,
    samplers/graph.py ``_skip_guard_eval``), and the ops contract's opcheck checks ddpm_fast's
    fakes against its kernels' outputs."""
    if device_type != "cpu" or kwargs.get("backend", "inductor") != "inductor" or not routes_attention():
        return kwargs
    options = dict(kwargs.get("options") or {})
    if options.get("post_grad_custom_post_pass") is not None:
        return kwargs
    out = {k: v for k, v in kwargs.items() if k != "mode"}
    mode = kwargs.get("mode")
    if mode is not None:
        from torch._inductor import list_mode_options
        options = {**list_mode_options(mode, kwargs.get("dynamic")), **options}
    options["post_grad_custom_post_pass"] = PASS
    options.setdefault("size_asserts", False)
    out["options"] = options
    return out
