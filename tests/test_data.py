"""Data: the embedded digits, image folders, IDX files (plain and gzip), batch positions."""
import gzip

import numpy as np
import pytest
import torch

from ddpm_fast.data import ImageData, batch_indices, digits, image_folder, load_dataset, mnist_idx, read_idx
from ddpm_fast.data.datasets import take
from ddpm_fast.data.idx import write_idx


def test_digits_default_is_16x16_in_range_with_labels():
    d = digits()
    assert d.images.shape == (1797, 1, 16, 16) and d.images.dtype == torch.float32
    assert d.images.min() == -1 and d.images.max() == 1
    assert d.labels.shape == (1797,) and set(d.labels.tolist()) == set(range(10))
    # background is -1, strokes reach +1: the mean is well below 0 (mostly background)
    assert -0.9 < d.images.mean() < -0.2
    b = d.batch(torch.tensor([3, 0]))
    assert torch.equal(b[1], d.images[0])


def _mnist_like(n=5, h=28, w=28, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip_plain_and_gzip(tmp_path, compress):
    imgs, labels = _mnist_like()
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", imgs, compress=compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress=compress)
    if compress:
        with open(tmp_path / f"train-images-idx3-ubyte{suffix}", "rb") as f:
            assert f.read(2) == b"\x1f\x8b"
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), imgs)
    d = mnist_idx(tmp_path)                    # a folder with the standard names
    assert d.images.shape == (5, 1, 28, 28) and d.images.dtype == torch.uint8
    assert torch.equal(d.images[:, 0], torch.from_numpy(imgs))
    assert d.labels.tolist() == labels.tolist()
    x = d.batch(torch.arange(5))
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[:, 0], torch.from_numpy(imgs).float() / 127.5 - 1, atol=1e-6)
    assert load_dataset(str(tmp_path)).images.shape == (5, 1, 28, 28)


def test_idx_other_dtypes_and_resize(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_idx(tmp_path / "f.idx", arr)
    out = read_idx(tmp_path / "f.idx")
    assert out.dtype == np.float32 and np.array_equal(out, arr)
    imgs, _ = _mnist_like(3)
    write_idx(tmp_path / "imgs", imgs)
    d = mnist_idx(tmp_path / "imgs", resolution=16)
    assert d.images.shape == (3, 1, 16, 16) and d.labels is None


def test_idx_rejects_garbage_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x80\x03\x04\x05not an idx file")   # a pickle header
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    imgs, _ = _mnist_like(2)
    write_idx(tmp_path / "ok", imgs)
    data = (tmp_path / "ok").read_bytes()
    (tmp_path / "trunc").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="bytes follow"):
        read_idx(tmp_path / "trunc")
    with gzip.open(tmp_path / "labels.gz", "wb") as f:
        f.write(data[:-1])
    with pytest.raises(ValueError):
        read_idx(tmp_path / "labels.gz")


def test_image_folder_any_size_resized_and_center_cropped(tmp_path):
    from PIL import Image
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    # a wide RGB image whose centre is red and whose sides are blue: the crop keeps the red
    wide = np.zeros((40, 120, 3), dtype=np.uint8)
    wide[:, :40, 2] = 255
    wide[:, 80:, 2] = 255
    wide[:, 40:80, 0] = 255
    Image.fromarray(wide).save(tmp_path / "cats" / "a.png")
    Image.fromarray(np.full((50, 30, 3), 128, np.uint8)).save(tmp_path / "dogs" / "b.jpg")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(tmp_path / "dogs" / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    d = image_folder(tmp_path, resolution=12)
    assert d.images.shape == (3, 3, 12, 12) and d.images.dtype == torch.uint8
    assert d.labels.tolist() == [0, 1, 1] and d.class_names == ("cats", "dogs")
    assert take(d, [2, 0]).class_names == ("cats", "dogs")
    a = d.images[0].float()
    assert a[0].mean() > 250 and a[2].mean() < 5          # only the red centre survives
    g = image_folder(tmp_path, resolution=12, channels=1)
    assert g.images.shape == (3, 1, 12, 12)
    assert load_dataset(str(tmp_path), resolution=12).images.shape == (3, 3, 12, 12)


def test_image_folder_greyscale_auto_channels(tmp_path):
    from PIL import Image
    for i in range(2):
        Image.fromarray(np.full((20, 20), 60 * i, np.uint8), "L").save(tmp_path / f"{i}.png")
    d = image_folder(tmp_path, resolution=8)
    assert d.images.shape == (2, 1, 8, 8) and d.labels is None


def test_empty_or_missing_data_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        image_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(ValueError):
        ImageData(torch.zeros(0, 1, 4, 4))


def test_batch_indices_pure_function_of_step_covering_each_epoch():
    n, B = 10, 4
    seq = torch.cat([batch_indices(s, n, B, seed=7) for s in range(5)])   # 20 = two epochs
    assert sorted(seq[:10].tolist()) == list(range(10))
    assert sorted(seq[10:].tolist()) == list(range(10))
    assert not torch.equal(seq[:10], seq[10:])                             # reshuffled per epoch
    assert torch.equal(batch_indices(3, n, B, seed=7), seq[12:16])         # no replay needed
    assert not torch.equal(batch_indices(0, n, B, seed=8), seq[:4])


def test_batch_indices_ranks_tile_the_global_batch():
    n, B, W = 13, 3, 2
    for step in range(6):
        glob = batch_indices(step, n, B * W, seed=1)
        shards = torch.cat([batch_indices(step, n, B, seed=1, rank=r, world_size=W) for r in range(W)])
        assert torch.equal(glob, shards)


def test_class_names_must_name_every_label():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    assert ImageData(x, torch.tensor([0, 1, 1]), class_names=["a", "b"]).class_names == ("a", "b")
    for names, labels in ((["a"], [0, 1, 1]), (["a", "a"], [0, 1, 1]), (["a", ""], [0, 1, 1]),
                          (["a", "b"], None)):
        with pytest.raises(ValueError, match="class_names|labels span"):
            ImageData(x, None if labels is None else torch.tensor(labels), class_names=names)
