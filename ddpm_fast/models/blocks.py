"""Building blocks of the DDPM UNet (Ho et al. 2020, the diffusion_tf model), with every
normalisation going through the fused op ``groupnorm_temb_silu`` of the dispatcher.

Shapes: feature maps (B, C, H, W); ``emb`` is the time (+ class) embedding after its SiLU,
(B, temb_ch). The ops are called through the backend interface (positional, already-valid
arguments, enums as ints; ddpm_fast/ops/reference.py) resolved by
``ddpm_fast.ops.implementation`` — a cached dict lookup that ``torch.compile(fullgraph=True)``
traces without a graph break once the (op, backend, device type) entry is resolved (UNet
resolves it at construction and on every eager call).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.dispatch import BackendUnavailableError, implementation
from ..ops.enums import TEMB_BEFORE_NORM, TEMB_NONE

__all__ = ["group_count", "GroupNormAct", "ResBlock", "AttnBlock", "Downsample", "Upsample",
           "init_weights_", "FUSED_OPS"]

FUSED_OPS = ("groupnorm_temb_silu",)  # the ops a UNet forward resolves through the dispatcher


def group_count(channels: int, num_groups: int = 32) -> int:
    """The largest divisor of ``channels`` that is <= ``num_groups`` (GroupNorm(32) for wide
    layers, fewer groups for tiny channel counts: group_count(24) = 24, group_count(48) = 24)."""
    g = max(1, min(num_groups, channels))
    while channels % g:
        g -= 1
    return g


def resolve_ops(backend: Optional[str], device: torch.device, *, strict: bool = True) -> None:
    """Resolve (and so cache in the dispatcher) every op the UNet calls, for ``device``.
    With strict=False an unavailable backend is left for the forward to report."""
    for op in FUSED_OPS:
        try:
            implementation(op, backend, torch.device(device))
        except BackendUnavailableError:
            if strict:
                raise


class GroupNormAct(nn.GroupNorm):
    """silu(GroupNorm(x + temb)) in one fused op (``groupnorm_temb_silu``, temb "before_norm").

    Parameters are nn.GroupNorm's (``weight``, ``bias`` [C]) so state dicts match a plain port.
    forward(x (B, C, *spatial), temb (B, C) or None) -> (B, C, *spatial), x's dtype.
    ``silu=False`` gives a plain GroupNorm (the attention block's norm)."""

    def __init__(self, channels: int, num_groups: int = 32, *, silu: bool = True, eps: float = 1e-6,
                 backend: Optional[str] = None):
        # eps 1e-6: tf.contrib.layers.group_norm's default, which the original used
        super().__init__(group_count(channels, num_groups), channels, eps=eps)
        self.silu = silu
        self.backend = backend

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        impl = implementation("groupnorm_temb_silu", self.backend, x.device)
        mode = TEMB_NONE if temb is None else TEMB_BEFORE_NORM
        return impl(x, self.weight, self.bias, temb, self.num_groups, self.eps, mode, self.silu)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, silu={self.silu}, backend={self.backend!r}"


class ResBlock(nn.Module):
    """h = conv1(silu(GN(x))); h = conv2(dropout(silu(GN(h + Linear(emb))))); return skip(x) + h.

    The time-embedding add, the second GroupNorm and its SiLU are one fused op. conv2 starts at
    zero (the original's init_scale=0), so every block starts as the identity on its skip path.
    forward(x (B, in_ch, H, W), emb (B, temb_ch), already SiLU'd) -> (B, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float = 0.0,
                 num_groups: int = 32, backend: Optional[str] = None):
        super().__init__()
        self.norm1 = GroupNormAct(in_ch, num_groups, backend=backend)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = GroupNormAct(out_ch, num_groups, backend=backend)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.conv2.zero_init = True

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x))                 # (B, out_ch, H, W)
        h = self.norm2(h, self.temb_proj(emb))        # silu(GN(h + temb[:, :, None, None]))
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual:
    x + proj_out(softmax(q k^T / sqrt(C)) v), q/k/v 1x1 convs of GroupNorm(x).
    proj_out starts at zero (the original's init_scale=0). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, num_groups: int = 32, backend: Optional[str] = None):
        super().__init__()
        self.norm = GroupNormAct(channels, num_groups, silu=False, backend=backend)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.proj_out.zero_init = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)

        def tokens(conv):                             # (B, C, H, W) -> (B, 1, H*W, C)
            return conv(h).reshape(B, 1, C, H * W).transpose(-1, -2)

        a = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        a = a.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj_out(a)


class Downsample(nn.Module):
    """Stride-2 conv3x3, (B, C, H, W) -> (B, C, H/2, W/2). Padding (0, 1) on each spatial side:
    TensorFlow's "SAME" for stride 2 on even sizes, as in the original."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then conv3x3, (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def init_weights_(module: nn.Module) -> None:
    """The original's init: conv/linear weights variance_scaling(1, fan_avg, uniform) (= Xavier
    uniform), biases zero; layers marked ``zero_init`` (each ResBlock's conv2, attention
    proj_out, the output conv) all zero. Embedding tables keep PyTorch's N(0, 1)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if getattr(m, "zero_init", False):
                nn.init.zeros_(m.weight)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
