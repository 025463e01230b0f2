"""The DDPM UNet of Ho et al. 2020 (diffusion_tf's ``model``), with its normalisations running
through the fused-op dispatcher (``backend=`` on the model, or the global default).

    model = UNet.tiny(in_channels=1, resolution=28)
    eps = model(x_t, t)              # x_t (B, 1, 28, 28) float, t (B,) int -> (B, 1, 28, 28)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import sinusoidal_embedding
from .blocks import AttnBlock, Downsample, GroupNormAct, ResBlock, Upsample, init_weights_, resolve_ops

__all__ = ["UNet"]


class UNet(nn.Module):
    """DDPM UNet: conv_in; per level ``num_res_blocks`` ResBlocks (+ attention where the feature
    map's side is in ``attn_resolutions``) then a stride-2 downsample; middle ResBlock-Attn-ResBlock;
    per level on the way up ``num_res_blocks + 1`` ResBlocks, each taking one skip connection by
    concatenation, then nearest-x2 upsample; out GroupNorm + SiLU + conv3x3 (zero-initialised).

    Time: sinusoidal embedding (dim ``ch``) -> Linear(ch, 4ch) -> SiLU -> Linear(4ch, 4ch)
    [+ class embedding when ``num_classes`` is set], then SiLU once and a Linear per ResBlock.

    Args:
        in_channels, out_channels: image channels in / out (out defaults to in).
        ch: base width; level i has ``ch * ch_mult[i]`` channels.
        ch_mult: channel multiplier per level (len(ch_mult) - 1 downsamplings).
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attn_resolutions: feature-map sides (heights) at which self-attention is applied.
        dropout: dropout in every ResBlock, between its second norm and conv.
        resolution: input image size, int or (H, W); inputs must have exactly this size.
        num_classes: None, or the number of classes K (>= 1) for class conditioning (``y`` in
            forward). Label K is the reserved null class ("no label", :attr:`null_class`),
            the unconditional input of classifier-free guidance: the embedding has K + 1 rows.
        num_groups: GroupNorm groups (>= 1), clamped per layer to the largest divisor of its channels.
        learn_sigma: output twice ``out_channels``: the prediction, then a learned-variance term
            per channel (for ``sample(..., variance_type="learned_range")``).
        backend: ops backend for the fused ops ("reference", "cpp", "cuda", "triton", "auto");
            None follows the global default (``ddpm_fast.set_backend``).
    """

    def __init__(self, in_channels: int = 3, out_channels: Optional[int] = None, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resolution=32,
                 num_classes: Optional[int] = None, num_groups: int = 32, backend: Optional[str] = None,
                 learn_sigma: bool = False):
        super().__init__()
        res = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        ch_mult = tuple(int(m) for m in ch_mult)
        if len(res) != 2 or min(res) <= 0 or len(ch_mult) == 0 or num_res_blocks < 1:
            raise ValueError("need resolution > 0 (int or (H, W)), a non-empty ch_mult and "
                             "num_res_blocks >= 1")
        _check_sizes(in_channels=in_channels, out_channels=out_channels, ch=ch, ch_mult=ch_mult,
                     num_classes=num_classes, num_groups=num_groups)
        factor = 2 ** (len(ch_mult) - 1)
        if res[0] % factor or res[1] % factor:
            raise ValueError(f"resolution {res} must be divisible by 2**(len(ch_mult)-1) = {factor}")
        self.in_channels = in_channels
        # learn_sigma: the mean prediction, then as many variance channels (Nichol & Dhariwal
        # 2021); sample with variance_type="learned_range" (samplers/learned_variance.py)
        self.learn_sigma = bool(learn_sigma)
        self.out_channels = (out_channels or in_channels) * (2 if learn_sigma else 1)
        self.ch, self.ch_mult, self.num_res_blocks = ch, ch_mult, num_res_blocks
        self.attn_resolutions = tuple(attn_resolutions)
        self.resolution = res
        self.num_classes = num_classes
        self._backend = backend
        temb_ch = 4 * ch
        G = num_groups

        def res_block(cin, cout):
            return ResBlock(cin, cout, temb_ch, dropout, G, backend)

        def attn(c, side):
            return AttnBlock(c, G, backend) if side in self.attn_resolutions else nn.Identity()

        self.temb = nn.Sequential(nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        # one row per class and a last one for the null class (classifier-free guidance)
        self.class_emb = nn.Embedding(num_classes + 1, temb_ch) if num_classes is not None else None
        self._checked_labels = None     # (data_ptr, version, shape) of the last y found in range
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        # down path; skip_chs records the channels of every tensor pushed for the up path
        side, cin, skip_chs = res[0], ch, [ch]
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.blocks, level.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                level.blocks.append(res_block(cin, ch * mult))
                cin = ch * mult
                level.attns.append(attn(cin, side))
                skip_chs.append(cin)
            level.downsample = Downsample(cin) if i < len(ch_mult) - 1 else nn.Identity()
            if i < len(ch_mult) - 1:
                side //= 2
                skip_chs.append(cin)
            self.down.append(level)

        self.mid_block1 = res_block(cin, cin)
        self.mid_attn = AttnBlock(cin, G, backend)
        self.mid_block2 = res_block(cin, cin)

        # up path, built from the lowest resolution up; self.up[i] is level i
        up = []
        for i, mult in reversed(list(enumerate(ch_mult))):
            level = nn.Module()
            level.blocks, level.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(res_block(cin + skip_chs.pop(), ch * mult))
                cin = ch * mult
                level.attns.append(attn(cin, side))
            level.upsample = Upsample(cin) if i > 0 else nn.Identity()
            if i > 0:
                side *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)

        self.norm_out = GroupNormAct(cin, G, backend=backend)
        self.conv_out = nn.Conv2d(cin, self.out_channels, 3, padding=1)
        self.conv_out.zero_init = True
        init_weights_(self)
        resolve_ops(backend, torch.device("cpu"), strict=False)  # so compile-first use traces

    def _apply(self, fn, *args, **kwargs):
        """After ``.to(device)`` / ``.cuda()`` resolve the fused ops for the new device too:
        ``forward`` skips resolution while Dynamo traces (the lookup would break the graph), so
        ``torch.compile(unet.cuda(), fullgraph=True)`` before any eager call needs it done here."""
        out = super()._apply(fn, *args, **kwargs)
        self._resolve_for_parameters()
        return out

    def _resolve_for_parameters(self) -> None:
        for p in self.parameters():
            if p.device.type != "meta":
                try:
                    resolve_ops(self._backend, p.device, strict=False)
                except ValueError:    # an unknown backend name: forward reports it where it is used
                    pass
            break

    @property
    def null_class(self) -> Optional[int]:
        """The label of the null class (``num_classes``), or None for an unconditional model.
        Training drops labels to it (``train(cond_drop_prob=...)``); sampling passes it as the
        unconditional input of classifier-free guidance."""
        return self.num_classes

    # --- backend --------------------------------------------------------------------------------

    @property
    def backend(self) -> Optional[str]:
        """Ops backend of every fused norm (None = the global default); settable."""
        return self._backend

    @backend.setter
    def backend(self, name: Optional[str]) -> None:
        self._backend = name
        for m in self.modules():
            if isinstance(m, GroupNormAct):
                m.backend = name
        self._resolve_for_parameters()   # as in _apply: resolved before any trace

    # --- forward --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: float (B, in_channels, H, W) with (H, W) = ``resolution``, in the weights' dtype
        (any dtype under ``torch.autocast``); t: timesteps, int or float tensor (B,), a scalar
        tensor or a Python number (broadcast to B); y: int64 class labels (B,) in
        [0, num_classes] (num_classes = the null class), required iff ``num_classes`` is set.
        Returns (B, out_channels, H, W)."""
        B = self._check_inputs(x, y)
        if not torch.compiler.is_compiling():
            resolve_ops(self._backend, x.device)  # cached; raises if the backend cannot run here
        t = self._timesteps(t, B, x.device)

        emb = self.temb(sinusoidal_embedding(t, self.ch).to(x.dtype))  # (B, 4ch)
        if self.class_emb is not None:
            emb = emb + self.class_emb(y)
        emb = F.silu(emb)  # every ResBlock applies Linear(SiLU(temb)); the SiLU is shared

        hs = [self.conv_in(x)]
        for level in self.down:
            for block, attn in zip(level.blocks, level.attns):
                hs.append(attn(block(hs[-1], emb)))
            if not isinstance(level.downsample, nn.Identity):
                hs.append(level.downsample(hs[-1]))

        h = self.mid_block2(self.mid_attn(self.mid_block1(hs[-1], emb)), emb)

        for level in reversed(self.up):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            h = level.upsample(h)

        return self.conv_out(self.norm_out(h))

    def _check_inputs(self, x: torch.Tensor, y: Optional[torch.Tensor]) -> int:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"x must be a float tensor (B, C, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"x has {C} channels, the model expects in_channels={self.in_channels}")
        if (H, W) != self.resolution:
            factor = 2 ** (len(self.ch_mult) - 1)
            hint = "" if H % factor == 0 and W % factor == 0 else \
                f" (and the size must be divisible by 2**(len(ch_mult)-1) = {factor})"
            raise ValueError(f"x is {H}x{W} but the model was built for resolution "
                             f"{self.resolution[0]}x{self.resolution[1]}{hint}; attention is "
                             f"placed by resolution, so build the model with resolution=({H}, {W})")
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y was given but the model is unconditional (num_classes=None)")
        else:
            if y is None:
                raise ValueError(f"the model is class-conditional (num_classes={self.num_classes}): "
                                 f"pass y, int64 class labels of shape ({B},)")
            if not isinstance(y, torch.Tensor) or y.shape != (B,) or y.is_floating_point():
                raise ValueError(f"y must be an integer tensor of shape ({B},), got "
                                 f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
            self._check_labels(y)
        self._check_dtype(x)
        return B

    def _check_dtype(self, x: torch.Tensor) -> None:
        w = self.conv_in.weight.dtype
        if torch.compiler.is_compiling():
            return
        if x.dtype != w and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x is {x.dtype} but the model's weights are {w}: pass x.to({w}), "
                            f"convert the model (model.to({x.dtype})), or run under torch.autocast")

    def _check_labels(self, y: torch.Tensor) -> None:
        """Labels in [0, num_classes] (the last one is the null class), read once per label
        tensor (a host sync, skipped while compiling or capturing a CUDA graph; a sampling
        loop passes the same y every step)."""
        if torch.compiler.is_compiling() or (y.is_cuda and torch.cuda.is_current_stream_capturing()):
            return
        key = (y.data_ptr(), y._version, tuple(y.shape), y.device)
        if key == self._checked_labels:
            return
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(f"class labels y must be in [0, num_classes={self.num_classes}] "
                             f"({self.num_classes} is the null class), got values in "
                             f"[{int(y.min())}, {int(y.max())}]")
        self._checked_labels = key

    @staticmethod
    def _timesteps(t, B: int, device: torch.device) -> torch.Tensor:
        """t as a tensor (B,) on device: python numbers and scalar tensors are broadcast."""
        if not isinstance(t, torch.Tensor):
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise TypeError(f"t must be a tensor or a number, got {type(t).__name__}")
            return torch.full((B,), t, device=device,
                              dtype=torch.int64 if isinstance(t, int) else torch.float32)
        if t.dim() == 0 or t.shape == (1,):
            return t.reshape(1).expand(B).to(device)
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},), (1,) or (), got {tuple(t.shape)}")
        return t.to(device)

    # --- presets --------------------------------------------------------------------------------

    @classmethod
    def tiny(cls, in_channels: int = 1, resolution=16, **overrides) -> "UNet":
        """A small UNet for 16x16 / 28x28 single-channel data (MNIST-like) that trains on 2 CPU
        cores in minutes: ch=32, ch_mult=(1, 2, 2), 1 ResBlock per level, attention at the lowest
        resolution (side / 4), no dropout, GroupNorm(8) (at 4x4 the statistics of 32 groups
        would come from 16-32 values).

        1,112,801 parameters with in_channels=1 (any resolution). Forward of a batch of 64
        (eager, reference backend, torch 2.13, no_grad): 7.9 GFLOP at 16x16, 24.3 GFLOP at 28x28;
        on the 2-core CPU dev machine, measured while it was shared (load ~8), best of 8 on one
        thread: 0.52 s at 16x16, 1.13 s at 28x28 (two threads were slower under that load)."""
        res = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        cfg = dict(in_channels=in_channels, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                   attn_resolutions=(res[0] // 4,), dropout=0.0, resolution=resolution, num_groups=8)
        cfg.update(overrides)
        return cls(**cfg)

    @classmethod
    def ddpm_cifar10(cls, **overrides) -> "UNet":
        """Ho et al. 2020's CIFAR-10 model: 3 channels, 32x32, ch=128, ch_mult=(1, 2, 2, 2),
        2 ResBlocks per level, attention at 16x16, dropout 0.1: 35,746,307 parameters, the
        count of the widely used PyTorch ports of diffusion_tf (the paper's "35.7M")."""
        cfg = dict(in_channels=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                   attn_resolutions=(16,), dropout=0.1, resolution=32)
        cfg.update(overrides)
        return cls(**cfg)


def _check_sizes(**sizes) -> None:
    """Channel counts are ints >= 1 (out_channels / num_classes may be None). ch >= 4: the
    time embedding has ch // 2 frequencies spaced over ch // 2 - 1 intervals."""
    minimum = {"ch": 4}
    for name, v in sizes.items():
        if name == "ch_mult":
            if any(m < 1 for m in v):
                raise ValueError(f"ch_mult entries must be >= 1, got {v}")
            continue
        if v is None and name in ("out_channels", "num_classes"):
            continue
        lo = minimum.get(name, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            what = " (None: unconditional)" if name == "num_classes" else ""
            raise ValueError(f"{name} must be an int >= {lo}{what}, got {v!r}")
