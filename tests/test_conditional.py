"""Class-conditional training for classifier-free guidance: the UNet's null class, the label
drop (rate, determinism, batch-split invariance), labels from every data source, conditional
checkpoints. Tiny models, a few steps each."""
import math

import numpy as np
import pytest
import torch

from ddpm_fast import UNet
from ddpm_fast.data import ImageData, digits, image_folder, load_dataset
from ddpm_fast.data.datasets import take
from ddpm_fast.data.idx import write_idx
from ddpm_fast.data.indices import batch_indices, mix_seed
from ddpm_fast.noise import philox_uniform
from ddpm_fast.training import CheckpointError, ConfigError, TrainConfig, load_checkpoint, load_for_sampling, train
from ddpm_fast.training.conditioning import class_count, class_rows, drop_labels, guidance_kwargs

TINY = {"ch": 8, "ch_mult": [1, 2], "attn_resolutions": []}


def _unet(**kw):
    return UNet(in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                resolution=8, num_groups=4, **kw)


def config(out_dir, **kw):
    base = dict(steps=4, batch_size=8, ckpt_every=0, sample_n=0, model_kwargs=TINY, lr=1e-3,
                warmup_steps=1, progress=False, metric=False, threads=1, out_dir=str(out_dir),
                conditional=True)
    return TrainConfig(**{**base, **kw})


# -- the UNet's null class ------------------------------------------------------------------------

def test_null_class_is_the_last_embedding_row():
    m = _unet(num_classes=3)
    assert m.null_class == 3 and m.class_emb.weight.shape[0] == 4
    assert _unet().null_class is None
    with torch.no_grad():                    # non-trivial weights (the output convs start at 0)
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 5])
    with torch.no_grad():
        null = m(x, t, y=torch.tensor([3, 3]))                   # the null class is a valid label
        cls = m(x, t, y=torch.tensor([0, 2]))
        with pytest.raises(ValueError, match=r"in \[0, num_classes=3\] \(3 is the null class\)"):
            m(x, t, y=torch.tensor([0, 4]))
    assert torch.isfinite(null).all() and not torch.allclose(null, cls)


# -- dropping labels to the null class ------------------------------------------------------------

def test_drop_labels_equals_the_philox_reference_and_ignores_the_batch_split():
    y = torch.arange(40) % 7
    seed = mix_seed(5, 11, 3)
    got = drop_labels(y, 0.3, 7, seed)
    u = philox_uniform(seed, (40,), stream=0)                   # the reference generator itself
    assert torch.equal(got, torch.where(u < 0.3, torch.full_like(y, 7), y))
    # rank 1 of 2 draws its half at sample_offset 20: the same decisions as one process
    assert torch.equal(drop_labels(y[20:], 0.3, 7, seed, sample_offset=20), got[20:])
    assert torch.equal(drop_labels(y, 0.0, 7, seed), y)
    assert torch.equal(drop_labels(y, 1.0, 7, seed), torch.full_like(y, 7))
    with pytest.raises(ValueError, match="cond_drop_prob"):
        drop_labels(y, 1.5, 7, seed)


def test_drop_rate_is_the_probability():
    n, p = 20000, 0.1
    y = torch.zeros(n, dtype=torch.int64)
    dropped = sum(int((drop_labels(y, p, 10, mix_seed(0, s, 3)) == 10).sum()) for s in range(4))
    mean, sd = 4 * n * p, math.sqrt(4 * n * p * (1 - p))           # binomial(4n, p)
    assert abs(dropped - mean) < 5 * sd


class Recorder(torch.nn.Module):
    """A model that records the labels of every training call."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.seen = []

    def forward(self, x, t, y):
        self.seen.append(y.clone())
        return self.conv(x)


def test_training_feeds_the_batch_labels_dropped_by_seed_step_and_sample(tmp_path):
    data = take(digits(), range(40))
    rec = Recorder()
    train(config(tmp_path, steps=3, cond_drop_prob=0.25, seed=9), model=rec, data=data)
    assert len(rec.seen) == 3
    for step, y in enumerate(rec.seen):
        labels = data.labels[batch_indices(step, 40, 8, 9)]
        u = philox_uniform(mix_seed(9, step, 3), (8,), stream=0)
        assert torch.equal(y, torch.where(u < 0.25, torch.full_like(labels, 10), labels))
    rec2 = Recorder()                                           # same seed: same labels
    train(config(tmp_path / "again", steps=3, cond_drop_prob=0.25, seed=9), model=rec2, data=data)
    assert all(torch.equal(a, b) for a, b in zip(rec.seen, rec2.seen))


def test_cond_drop_prob_and_num_classes_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="cond_drop_prob: must be in \\[0, 1\\]"):
        config(tmp_path, cond_drop_prob=-0.1)
    with pytest.raises(ConfigError, match="conditional: must be True or False"):
        config(tmp_path, conditional="yes")
    with pytest.raises(ConfigError, match="num_classes comes from the data's labels"):
        config(tmp_path, model_kwargs={**TINY, "num_classes": 10})


# -- labels from each data source ------------------------------------------------------------------

def test_digits_have_ten_classes():
    assert class_count(digits().labels, "digits") == 10


def test_image_folder_labels_are_the_sorted_sub_folders(tmp_path):
    from PIL import Image
    for cls, n in (("cat", 2), ("ant", 1), ("bee", 3)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = image_folder(tmp_path, resolution=8)
    assert d.labels.tolist() == [0, 1, 1, 1, 2, 2]              # ant, bee x3, cat x2
    assert class_count(d.labels, d.name) == 3


def test_idx_labels_beside_an_images_file(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, compress=True)
    d = load_dataset(str(tmp_path / "train-images-idx3-ubyte"))   # one images file: its labels are found
    assert d.labels.tolist() == [3, 1, 4, 1, 5]
    assert load_dataset(str(tmp_path)).labels.tolist() == [3, 1, 4, 1, 5]   # the folder form too


def test_conditional_training_without_labels_is_a_clear_error(tmp_path):
    data = ImageData(torch.rand(8, 1, 16, 16) * 2 - 1, name="unlabelled")
    with pytest.raises(ValueError, match="conditional training needs class labels.*'unlabelled'"):
        train(config(tmp_path), data=data)


# -- checkpoints ------------------------------------------------------------------------------------

def test_checkpoint_stores_num_classes_and_loads_the_conditional_unet(tmp_path):
    from PIL import Image
    folder = tmp_path / "imgs"
    for c in range(3):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 80 * c + i, dtype=np.uint8)).save(folder / f"c{c}" / f"{i}.png")
    res = train(config(tmp_path / "run", steps=2, ckpt_every=1, resolution=8), data=str(folder))
    ckpt = load_checkpoint(res.checkpoint)
    assert ckpt.extra["num_classes"] == 3 and ckpt.config["conditional"] is True
    model, cfg, _ = load_for_sampling(res.checkpoint)
    assert model.num_classes == 3 and model.null_class == 3 and cfg.cond_drop_prob == 0.1
    for k, v in res.ema.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # resuming continues the conditional run; its structure cannot change
    assert train(config(tmp_path / "run", steps=3, resolution=8), data=str(folder), resume=True).step == 3
    with pytest.raises(ValueError, match="conditional"):
        train(config(tmp_path / "run", steps=4, resolution=8), data=str(folder), resume=True, conditional=False)


def test_a_conditional_checkpoint_without_num_classes_is_refused(tmp_path):
    from ddpm_fast.training import save_checkpoint
    from ddpm_fast.training.checkpoint import Checkpoint
    cfg = config(tmp_path)
    m = UNet.tiny(resolution=16, **TINY, num_classes=10)
    path = save_checkpoint(tmp_path / "c.safetensors", Checkpoint(1, cfg.to_dict(), m.state_dict(),
                                                                    extra={"image_shape": [1, 16, 16]}))
    with pytest.raises(CheckpointError, match="without num_classes"):
        load_for_sampling(path)


# -- grids and sample() arguments --------------------------------------------------------------------

def test_class_rows_and_guidance_kwargs():
    assert class_rows(3, 2).tolist() == [0, 0, 1, 1, 2, 2]
    y = torch.tensor([1, 2])
    assert guidance_kwargs(y, 5, 1.0) == {"model_kwargs": {"y": y}}   # w = 1: the conditional model alone
    kw = guidance_kwargs(y, 5, 3)
    assert kw["guidance_scale"] == 3.0 and kw["uncond_kwargs"]["y"].tolist() == [5, 5]
    with pytest.raises(ValueError, match="guidance"):
        guidance_kwargs(y, 5, float("nan"))
