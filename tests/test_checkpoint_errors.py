"""A checkpoint that cannot be used is a CheckpointError naming the file and what to do: truncated,
empty, random bytes, a PNG, a directory, a safetensors file that is not ours, metadata without
image_shape, and the weights of another architecture. Through the CLI: one line, exit status 1."""
import json
import os

import pytest
import torch

from ddpm_fast.cli import main
from ddpm_fast.training import CheckpointError, load_checkpoint, load_for_sampling, train
from ddpm_fast.training.checkpoint import FORMAT

TINY = {"ch": 8, "ch_mult": [1, 2], "attn_resolutions": []}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    g = torch.Generator().manual_seed(0)
    from ddpm_fast.data import ImageData
    data = ImageData(torch.rand(8, 1, 8, 8, generator=g) * 2 - 1, name="random")
    train(data=data, steps=1, batch_size=4, ckpt_every=0, sample_n=0, model_kwargs=TINY, progress=False,
          metric=False, threads=1, out_dir=str(out))
    return out / "last.safetensors"


def _png_bytes():
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


CORRUPT = {
    "truncated": lambda good: good.read_bytes()[: len(good.read_bytes()) // 2],
    "header_only": lambda good: good.read_bytes()[:7],
    "empty": lambda good: b"",
    "random_bytes": lambda good: bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3),
                                                     dtype=torch.uint8).tolist()),
    "png": lambda good: _png_bytes(),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_unreadable_file_names_the_path_and_what_to_do(good, tmp_path, kind):
    bad = tmp_path / f"{kind}.safetensors"
    bad.write_bytes(CORRUPT[kind](good))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    msg = str(e.value)
    assert str(bad) in msg and "not a readable checkpoint" in msg and "last.safetensors" in msg


def test_a_directory_points_at_the_file_inside(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a directory.*last\.safetensors"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_a_safetensors_file_that_is_not_ours(tmp_path):
    from safetensors.torch import save_file
    other = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(3)}, str(other))
    with pytest.raises(CheckpointError, match=f"{other}.*not a ddpm_fast checkpoint.*ddpm_fast.sample"):
        load_checkpoint(other)


def _rewrite_extra(good, tmp_path, extra):
    """A copy of the good checkpoint with its "extra" metadata replaced."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["extra"] = json.dumps(extra)
    path = tmp_path / "noshape.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


def test_missing_image_shape_is_a_clear_error(good, tmp_path):
    path = _rewrite_extra(good, tmp_path, {"world_size": 1})
    with pytest.raises(CheckpointError, match=f"{path}: no image_shape"):
        load_for_sampling(path)


def test_damaged_metadata_is_a_clear_error(good, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["config"] = "{not json"
    path = tmp_path / "badmeta.safetensors"
    save_file(tensors, str(path), metadata={**meta, "format": FORMAT})
    with pytest.raises(CheckpointError, match=f"{path}: damaged"):
        load_checkpoint(path)


def test_weights_of_another_architecture(good):
    from ddpm_fast.models import UNet
    other = UNet.tiny(in_channels=1, resolution=8, ch=16, ch_mult=(1, 2), attn_resolutions=())
    with pytest.raises(CheckpointError, match=f"{good}: its weights do not fit.*model_kwargs"):
        load_for_sampling(good, model=other)


def test_resume_from_another_architecture(good, tmp_path):
    """resume= a checkpoint whose weights do not fit the model passed in: named, not torch's
    multi-line size-mismatch dump."""
    from ddpm_fast.data import ImageData
    from ddpm_fast.models import UNet
    data = ImageData(torch.rand(8, 1, 8, 8) * 2 - 1, name="random")
    other = UNet.tiny(in_channels=1, resolution=8, ch=16, ch_mult=(1, 2), attn_resolutions=())
    with pytest.raises(CheckpointError, match="its weights do not fit"):
        train(model=other, data=data, resume=str(good), steps=2, progress=False, out_dir=str(tmp_path))


@pytest.mark.parametrize("kind", ["truncated", "png"])
def test_cli_prints_one_line_and_exits_1(good, tmp_path, capsys, kind):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(CORRUPT[kind](good))
    rc = main(["sample", "--checkpoint", str(bad), "--n", "2", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert rc == 1
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "g.png")
