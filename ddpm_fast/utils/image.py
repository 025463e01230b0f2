"""PNG output with Pillow only: image grids and a loss curve (no matplotlib needed)."""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch

__all__ = ["to_uint8", "make_grid", "save_grid", "save_loss_curve"]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [..., C, H, W] in [-1, 1] -> uint8 in 0..255 (clamped, rounded)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def make_grid(x: torch.Tensor, nrow: Optional[int] = None, padding: int = 2,
              pad_value: int = 0) -> torch.Tensor:
    """float [B, C, H, W] in [-1, 1] -> uint8 [H', W', C] grid, ``nrow`` images per row
    (default: a square-ish grid)."""
    if x.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W], got {tuple(x.shape)}")
    B, C, H, W = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(B)))
    rows = math.ceil(B / nrow)
    grid = torch.full((C, rows * (H + padding) + padding, nrow * (W + padding) + padding),
                      pad_value, dtype=torch.uint8)
    imgs = to_uint8(x)
    for i in range(B):
        r, c = divmod(i, nrow)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, top:top + H, left:left + W] = imgs[i]
    return grid.permute(1, 2, 0).contiguous()


def save_grid(x: torch.Tensor, path: str | os.PathLike, nrow: Optional[int] = None,
              padding: int = 2, scale: int = 1) -> str:
    """Write images ``x`` (float [B, C, H, W] in [-1, 1]) as one PNG grid; ``scale`` enlarges
    with nearest-neighbour so small images stay crisp. Returns the path."""
    from PIL import Image
    grid = make_grid(x, nrow, padding).numpy()
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid,
                          mode="L" if grid.shape[-1] == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def save_loss_curve(losses: Sequence[float], path: str | os.PathLike, *, title: str = "training loss",
                    size: tuple[int, int] = (640, 400), log_y: bool = True) -> str:
    """Loss per step as a PNG line plot: raw values in light grey, a moving average in blue,
    log-scale y by default. Non-finite values are dropped. Returns the path."""
    from PIL import Image, ImageDraw
    pts = [(i, float(v)) for i, v in enumerate(losses) if math.isfinite(float(v)) and (v > 0 or not log_y)]
    W, H = size
    ml, mr, mt, mb = 64, 16, 28, 36
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((ml, 8), title, fill="black")
    d.rectangle([ml, mt, W - mr, H - mb], outline="black")
    if pts:
        f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
        xs = [p[0] for p in pts]
        ys = [f(p[1]) for p in pts]
        smooth = _smooth(ys, max(1, len(ys) // 50))
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        lo, hi = min(ys), max(ys)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5

        def px(x, y):
            return (ml + (x - x0) / (x1 - x0) * (W - ml - mr), H - mb - (y - lo) / (hi - lo) * (H - mt - mb))

        d.line([px(x, y) for x, y in zip(xs, ys)], fill=(200, 200, 200), width=1)
        d.line([px(x, y) for x, y in zip(xs, smooth)], fill=(31, 119, 180), width=2)
        for k in range(5):   # y ticks
            y = lo + (hi - lo) * k / 4
            _, yy = px(x0, y)
            d.line([(ml - 4, yy), (ml, yy)], fill="black")
            label = f"{10 ** y:.3g}" if log_y else f"{y:.3g}"
            d.text((4, yy - 6), label, fill="black")
        for k in range(5):   # x ticks
            x = x0 + (x1 - x0) * k / 4
            xx, _ = px(x, lo)
            d.line([(xx, H - mb), (xx, H - mb + 4)], fill="black")
            d.text((xx - 10, H - mb + 8), f"{int(round(x))}", fill="black")
        d.text((W - mr - 200, mt + 6), f"last (avg): {10 ** smooth[-1] if log_y else smooth[-1]:.4g}",
               fill=(31, 119, 180))
    d.text((W // 2 - 12, H - 14), "step", fill="black")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path
