"""The compiled sampler's 3x3 convolutions on CPU: ATen's convolution replaced by ddpm_fast's
Winograd kernel (``ddpm_fast::conv3x3``, csrc/cpu/conv3x3.cpp) where it is faster.

``route_conv3x3`` rewrites each ``aten.convolution`` of a post-grad graph (what ``nn.Conv2d``
lowers to) into ``ddpm_fast::conv3x3`` when: float32 CPU tensors, a [K, C, 3, 3] weight, stride 1,
padding 1, dilation 1, one group, not transposed, and sizes where it is faster (below). It runs
inside the same Inductor post-grad pass as the attention routing (samplers/attention_pass.py).
The op returns channels-last (the layout Inductor plans for a CPU convolution's output) and is
tagged ``flexible_layout``: Inductor hands it its input in whatever layout it planned, without a
copy back to the traced strides. An input that feeds only this op is contiguous (Inductor's
channels-last preference follows ``aten.convolution`` users only); the kernel gathers either
layout into its scratch.

Where it routes (``faster_than_aten``): per convolution, 1 thread, torch 2.13, AMD EPYC (Zen 3,
AVX2), process time (``python -m benchmarks.bench_conv3x3``, table in docs/fast_sampler.md,
"Convolutions on CPU"): 1.3-1.9x faster than ATen at batch 1 to 8 from 3 channels up to
128 -> 128 (64 -> 64 at 16x16: 0.18 vs 0.35 ms; a UNet's 32 -> 3 output convolution: 0.16 vs
0.24 ms). The kernel keeps all 16 C x K transformed filters in cache for every block of tiles:
at 256 -> 256 it still wins at 16x16 (3.7 vs 4.9 ms) and, in one run, at 8x8 (1.5 vs 2.6 ms;
a tie in another), and 512 -> 512 at 8x8 takes twice ATen's time. Past 128 x 128 only the
16x16-and-larger sizes are routed.
"""
from __future__ import annotations

import torch

from .fx_rewrite import call_before

# C x K up to 128 x 128 at any size; up to 256 x 256 from 16 x 16 pixels
SMALL_FILTERS = 128 * 128
LARGE_FILTERS = 256 * 256
LARGE_MIN_PIXELS = 16 * 16


def faster_than_aten(C: int, K: int, H: int, W: int) -> bool:
    """Whether ddpm_fast::conv3x3 beats ATen's CPU convolution at these sizes (measured above)."""
    return C * K <= SMALL_FILTERS or (C * K <= LARGE_FILTERS and H * W >= LARGE_MIN_PIXELS)

_CONV = torch.ops.aten.convolution.default


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _eligible(node: torch.fx.Node) -> bool:
    x, w, b, stride, padding, dilation, transposed, _, groups = node.args
    xv, wv, bv = _val(x), _val(w), _val(b)
    if not (isinstance(xv, torch.Tensor) and isinstance(wv, torch.Tensor)) or xv.dim() != 4 or wv.dim() != 4:
        return False
    if b is not None and not (isinstance(bv, torch.Tensor) and bv.dtype == torch.float32):
        return False
    K, C, kh, kw = wv.shape
    return (xv.device.type == "cpu" and xv.dtype == torch.float32 and wv.dtype == torch.float32
            and (kh, kw) == (3, 3) and faster_than_aten(C, K, xv.shape[2], xv.shape[3])
            and list(stride) == [1, 1] and list(padding) == [1, 1] and list(dilation) == [1, 1]
            and not transposed and groups == 1)


def route_conv3x3(graph: torch.fx.Graph) -> int:
    """Replace every eligible convolution of ``graph`` by ``ddpm_fast::conv3x3``; returns how many
    it replaced."""
    op = torch.ops.ddpm_fast.conv3x3.default
    n = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _CONV or not _eligible(node):
            continue
        x, w, b = node.args[:3]
        fake = torch.empty_like(node.meta["val"], memory_format=torch.channels_last)   # the op's
        new = call_before(graph, node, op, (x, w, b), fake)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        n += 1
    return n
