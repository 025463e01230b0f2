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
    ``labels``: int64 [N] or None; ``name``: what the data is (stored in checkpoint configs);
    ``class_names``: the name of each label 0..K-1 where the data has them (an image folder's
    sub-folder names; a conditional checkpoint stores them, so ``--class`` can take a name).

    Float images are checked once: values outside [-1, 1] (or not finite) are an error, and so
    are images with no negative value at all, the signature of [0, 1] data (torchvision's
    ``ToTensor``) that was not rescaled with ``x * 2 - 1``; ``check_range=False`` skips the
    second rule for data that really is all >= 0 in [-1, 1]."""
    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    name: str = "custom"
    check_range: bool = True
    class_names: Optional[tuple] = None

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4:
            got = tuple(self.images.shape) if isinstance(self.images, torch.Tensor) else type(self.images).__name__
            raise ValueError(f"images must be a tensor [N, C, H, W], got {got}")
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 (0..255) or float32 (in [-1, 1]), got "
                             f"{self.images.dtype}; convert with .float() after scaling to [-1, 1]")
        if len(self) == 0:
            raise ValueError(f"data set {self.name!r} is empty")
        if self.images.dtype == torch.float32:
            self._check_float_range()
        if self.labels is not None:
            lab = self.labels
            if not isinstance(lab, torch.Tensor) or lab.shape != (len(self),) or lab.is_floating_point():
                got = tuple(lab.shape) if isinstance(lab, torch.Tensor) else type(lab).__name__
                raise ValueError(f"labels must be an integer tensor [{len(self)}] (one per image), got {got}")
        if self.class_names is not None:
            names = self.class_names = tuple(self.class_names)
            if self.labels is None or not all(isinstance(n, str) and n for n in names) \
                    or len(set(names)) != len(names):
                raise ValueError(f"class_names must be distinct non-empty strings, one per label, with "
                                 f"labels given; got {names!r}")
            if int(self.labels.max()) >= len(names) or int(self.labels.min()) < 0:
                raise ValueError(f"labels span [{int(self.labels.min())}, {int(self.labels.max())}] but "
                                 f"class_names names {len(names)} classes")

    def _check_float_range(self) -> None:
        x = self.images
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"data set {self.name!r}: float images contain NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1 or hi > 1:
            hint = " (0..255 data: pass uint8 images, or x / 127.5 - 1)" if hi > 1.5 else ""
            raise ValueError(f"data set {self.name!r}: float images must lie in [-1, 1], these span "
                             f"[{lo:.4g}, {hi:.4g}]{hint}")
        if self.check_range and lo >= 0:
            raise ValueError(f"data set {self.name!r}: float images span [{lo:.4g}, {hi:.4g}], none "
                             "negative: [0, 1] data (e.g. torchvision's ToTensor) must be rescaled to "
                             "[-1, 1] with x * 2 - 1 (if these really are [-1, 1] images, pass "
                             "check_range=False)")

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
    Alpha is composited onto black. 16-bit greyscale is scaled by 255/65535 and float images
    must be in [0, 1] (others are refused, naming the file). A file that cannot be read is an
    error naming it. Sub-folder names become labels when there are several."""
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
    imgs = [_center_square(_open_image(f), resolution) for f in files]
    if channels is None:
        grey = all(im.mode in ("L", "1", "F") for im in imgs)
        channels = 1 if grey else 3
    arr = np.stack([_to_uint8(im, channels).reshape(resolution, resolution, channels) for im in imgs])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    rel = [os.path.relpath(os.path.dirname(f), root) for f in files]
    classes = sorted(set(rel))
    labels, names = None, None
    if len(classes) > 1:
        lut = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([lut[r] for r in rel], dtype=torch.int64)
        names = tuple(c.replace(os.sep, "/") for c in classes)
    return ImageData(x, labels, name=f"folder:{root}", class_names=names)


# Pillow modes holding more than 8 bits per pixel: the value that means full white. "I" is a
# 32-bit int; Pillow uses it for 16-bit PNGs and TIFFs, so it is read as 16 bits (and refused
# beyond). "F" (float TIFF) must already be in [0, 1].
_HIGH_DEPTH_WHITE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0,
                     "I": 65535.0, "F": 1.0}


def _open_image(path: str):
    """The image at ``path``, loaded: alpha composited onto black, and high-bit-depth greyscale
    (16-bit, 32-bit int, float) as a float "F" image in 0..255 scaled by the mode's real range,
    not clipped at 255 as Pillow's convert("L") does."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in _HIGH_DEPTH_WHITE:
                return _high_depth_to_float(im, path)
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA")
                return Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
            return im.copy()
    except (OSError, SyntaxError, EOFError, ValueError) as e:   # truncated, corrupt, not an image
        raise ValueError(f"{path}: cannot read this image ({type(e).__name__}: {e}); repair, "
                         "re-export or remove the file") from None


def _high_depth_to_float(im, path: str):
    from PIL import Image
    white = _HIGH_DEPTH_WHITE[im.mode]
    a = np.asarray(im, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if not np.isfinite(a).all() or lo < 0 or hi > white:
        raise ValueError(f"{path}: a {im.mode} image with values in [{lo:.6g}, {hi:.6g}]; only "
                         f"[0, {white:g}] can be read as an image ({'16-bit' if white > 1 else 'float in [0, 1]'}): "
                         "rescale it, or save it as 8-bit")
    return Image.fromarray((a * (255.0 / white)).astype(np.float32))     # float32 -> mode "F"


def _to_uint8(im, channels: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] pixels of a loaded image in ``channels`` channels."""
    if im.mode == "F":
        a = np.clip(np.rint(np.asarray(im, dtype=np.float32)), 0, 255).astype(np.uint8)
        return a if channels == 1 else np.repeat(a[..., None], 3, axis=-1)
    return np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)


_MNIST_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(folder: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def _sibling_labels(images_path: str) -> Optional[str]:
    """The labels file next to an images file named in the MNIST way
    (``*-images-idx3-ubyte[.gz]`` -> ``*-labels-idx1-ubyte[.gz]``, also with dots), if present."""
    folder, name = os.path.split(images_path)
    for img, lab in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if img in name:
            stem = name.replace(img, lab)
            stem = stem[:-3] if stem.endswith(".gz") else stem
            return _find(folder, stem.replace("labels.idx1", "labels-idx1"))
    return None


def mnist_idx(path: str | os.PathLike, split: str = "train", resolution: Optional[int] = None,
              labels_path: Optional[str | os.PathLike] = None) -> ImageData:
    """MNIST / Fashion-MNIST from IDX files: ``path`` is either an images file
    (``train-images-idx3-ubyte[.gz]``) or a folder holding the standard file names
    (``split`` = "train" or "test" picks which). uint8 [N, 1, 28, 28] (or resized).
    Labels (int64 [N]) come from ``labels_path``, else from the labels file of the split
    (``train-labels-idx1-ubyte[.gz]``) beside the images; without one, ``labels`` is None."""
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
        if labels_path is None:
            labels_path = _sibling_labels(images_path)
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
    return ImageData(data.images.index_select(0, idx).clone(), labels, data.name, check_range=False,
                     class_names=data.class_names if labels is not None else None)
