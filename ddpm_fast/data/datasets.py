"""Image data sets held in memory as :class:`ImageData`.

- ``digits()``: scikit-learn's bundled handwritten digits (1797 images, 8x8, 17 grey levels),
  resized to 16x16 — the default; no download, ever.
- ``image_folder(path, resolution)``: every PNG/JPEG/BMP/WebP under a folder (Pillow),
  shorter side resized to ``resolution`` then centre-cropped.
- ``mnist_idx(path)``: MNIST / Fashion-MNIST IDX files the user already has (optionally .gz).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .idx import read_idx

__all__ = ["ImageData", "digits", "image_folder", "mnist_idx", "load_dataset", "take", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class ImageData:
    """``images``: uint8 [N, C, H, W] (0..255) or float32 [N, C, H, W] already in [-1, 1];
    ``labels``: int64 [N] or None; ``name``: what the data is (stored in checkpoint configs)."""
    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    name: str = "custom"

    def __post_init__(self):
        if self.images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got {tuple(self.images.shape)}")
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 or float32, got {self.images.dtype}")
        if len(self) == 0:
            raise ValueError(f"data set {self.name!r} is empty")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def batch(self, indices: torch.Tensor, device=None) -> torch.Tensor:
        """float32 [len(indices), C, H, W] in [-1, 1] on ``device``."""
        x = self.images.index_select(0, indices.cpu())
        if x.dtype == torch.uint8:
            x = x.float().mul_(2.0 / 255.0).sub_(1.0)
        return x.to(device) if device is not None else x

    def all(self, device=None) -> torch.Tensor:
        return self.batch(torch.arange(len(self)), device)

    def __repr__(self) -> str:
        c, h, w = self.shape
        return f"ImageData({self.name}: {len(self)} images, {c}x{h}x{w})"


def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """float [N, C, h, w] -> [N, C, r, r] (bilinear, antialiased when shrinking)."""
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=True)


def digits(resolution: int = 16) -> ImageData:
    """scikit-learn's 1797 handwritten digits, float32 [1797, 1, r, r] in [-1, 1] (ink = +1),
    with labels 0..9. Bilinear upsampling of the 8x8 originals (values 0..16)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)   # (N, 1, 8, 8) in [0, 1]
    x = _resize(x, resolution).clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
    return ImageData(x.contiguous(), torch.from_numpy(d.target.astype(np.int64)),
                     name=f"digits{resolution}")


def _center_square(img, resolution: int):
    from PIL import Image
    w, h = img.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC if s > 1 else Image.LANCZOS)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def image_folder(path: str | os.PathLike, resolution: int = 32, channels: Optional[int] = None,
                 *, max_images: Optional[int] = None) -> ImageData:
    """Every image file under ``path`` (recursively, sorted by path), as uint8 [N, C, r, r].

    ``channels``: 1 (greyscale) or 3 (RGB); None picks 1 when every image is greyscale, else 3.
    Alpha is composited onto black. Sub-folder names become labels when there are several."""
    from PIL import Image
    root = os.fspath(path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such folder: {root}")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if max_images is not None:
        files = files[:max_images]
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    imgs = []
    for f in files:
        with Image.open(f) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            imgs.append(_center_square(im, resolution))
    if channels is None:
        grey = all(im.mode in ("L", "1", "I", "I;16", "F") for im in imgs)
        channels = 1 if grey else 3
    mode = "L" if channels == 1 else "RGB"
    arr = np.stack([np.asarray(im.convert(mode), dtype=np.uint8).reshape(resolution, resolution, channels)
                    for im in imgs])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    rel = [os.path.relpath(os.path.dirname(f), root) for f in files]
    classes = sorted(set(rel))
    labels = None
    if len(classes) > 1:
        lut = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([lut[r] for r in rel], dtype=torch.int64)
    return ImageData(x, labels, name=f"folder:{root}")


_MNIST_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(folder: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def mnist_idx(path: str | os.PathLike, split: str = "train", resolution: Optional[int] = None,
              labels_path: Optional[str | os.PathLike] = None) -> ImageData:
    """MNIST / Fashion-MNIST from IDX files: ``path`` is either an images file
    (``train-images-idx3-ubyte[.gz]``) or a folder holding the standard file names
    (``split`` = "train" or "test" picks which). uint8 [N, 1, 28, 28] (or resized)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if split not in _MNIST_NAMES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        img_stem, lab_stem = _MNIST_NAMES[split]
        images_path = _find(path, img_stem)
        if images_path is None:
            raise FileNotFoundError(f"no {img_stem}[.gz] in {path}")
        if labels_path is None:
            labels_path = _find(path, lab_stem)
    else:
        images_path = path
    arr = read_idx(images_path)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{images_path}: expected images [N, H, W] or [N, C, H, W], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 pixels, got {arr.dtype}")
    x = torch.from_numpy(arr)
    if resolution is not None and tuple(x.shape[-2:]) != (resolution, resolution):
        x = _resize(x.float(), resolution).round_().clamp_(0, 255).to(torch.uint8)
    labels = None
    if labels_path is not None:
        lab = read_idx(labels_path)
        if lab.shape != (x.shape[0],):
            raise ValueError(f"{labels_path}: {lab.shape[0] if lab.ndim else 0} labels for {x.shape[0]} images")
        labels = torch.from_numpy(lab.astype(np.int64))
    return ImageData(x.contiguous(), labels, name=f"idx:{images_path}")


def load_dataset(spec: str = "digits", resolution: Optional[int] = None,
                 channels: Optional[int] = None) -> ImageData:
    """``spec``: "digits" (default, 16x16), a folder of images, a folder with MNIST IDX files,
    or one IDX images file. ``resolution`` resizes (default: digits 16, folders 32, IDX native)."""
    if spec in ("digits", "sklearn-digits"):
        return digits(resolution or 16)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"data {spec!r}: not 'digits' and no such file or folder")
    if os.path.isfile(spec):
        return mnist_idx(spec, resolution=resolution)
    if any(_find(spec, stems[0]) for stems in _MNIST_NAMES.values()):
        return mnist_idx(spec, resolution=resolution)
    return image_folder(spec, resolution or 32, channels)


def take(data: ImageData, indices: Sequence[int]) -> ImageData:
    """A subset (shares nothing with the original)."""
    idx = torch.as_tensor(list(indices), dtype=torch.int64)
    labels = data.labels.index_select(0, idx) if data.labels is not None else None
    return ImageData(data.images.index_select(0, idx).clone(), labels, data.name)
