"""Data that would train silently on wrong values is converted by its real range or refused:
16-bit and float greyscale images, float tensors outside [-1, 1] or in [0, 1]; files that cannot
be read (a truncated PNG, a truncated .gz IDX) are errors naming the file."""
import gzip

import numpy as np
import pytest
import torch

from ddpm_fast.data import ImageData, image_folder, mnist_idx, read_idx
from ddpm_fast.data.idx import write_idx


def _ramp(h=16, w=16):
    """A horizontal ramp in [0, 1] (float64), the same in every row."""
    return np.tile(np.linspace(0.0, 1.0, w), (h, 1))


def test_16bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    """A 16-bit ramp used to come out as {0, 255} (Pillow's convert("L") clips at 255)."""
    from PIL import Image
    ramp = _ramp()
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    d = image_folder(tmp_path, resolution=16)
    assert d.images.shape == (1, 1, 16, 16)
    expected = torch.from_numpy(np.round(ramp * 255)).to(torch.uint8)
    assert (d.images[0, 0].int() - expected.int()).abs().max() <= 1
    assert len(torch.unique(d.images)) >= 15          # a ramp, not two values


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    from PIL import Image
    ramp = _ramp()
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "f.tif")
    d = image_folder(tmp_path, resolution=16, channels=3)      # greyscale repeated to RGB
    assert d.images.shape == (1, 3, 16, 16)
    expected = torch.from_numpy(np.round(ramp * 255)).to(torch.uint8)
    for c in range(3):
        assert (d.images[0, c].int() - expected.int()).abs().max() <= 1


@pytest.mark.parametrize("values,mode", [(np.full((8, 8), 3.0, np.float32), "F"),
                                         (np.full((8, 8), -0.5, np.float32), "F"),
                                         (np.full((8, 8), 70000, np.int32), "I")])
def test_high_depth_image_outside_its_range_is_refused_by_name(tmp_path, values, mode):
    from PIL import Image
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(ValueError, match=f"{path}: a {mode} image with values"):
        image_folder(tmp_path, resolution=8)


def test_truncated_png_names_the_file(tmp_path):
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png: cannot read this image.*remove the file"):
        image_folder(tmp_path, resolution=8)
    (tmp_path / "cut.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cut\.png: cannot read"):
        image_folder(tmp_path, resolution=8)


def test_truncated_gzip_idx_names_the_file(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs, compress=True)
    blob = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: damaged gzip"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz"):
        mnist_idx(tmp_path)


def test_float_images_must_be_in_minus_one_one():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    ImageData(x)                                             # fine
    with pytest.raises(ValueError, match=r"x \* 2 - 1"):
        ImageData((x + 1) / 2)                               # [0, 1], torchvision's ToTensor
    ImageData((x + 1) / 2, check_range=False)                # the user vouches for it
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*uint8"):
        ImageData((x + 1) * 127.5)                           # float 0..255
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        ImageData(x * 1.01 + 0.02)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ImageData(bad)


def test_labels_must_be_one_integer_per_image():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="labels"):
        ImageData(x, labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        ImageData(x, labels=torch.zeros(4))
