"""Training: exact resume (injected stop and a real SIGKILL), atomic checkpoints, non-finite
losses, targets and min-SNR weights, outputs. Tiny UNet, a 64-digit subset, a few steps each."""
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ddpm_fast.data import digits
from ddpm_fast.data.datasets import take
from ddpm_fast.schedule import Col, NoiseSchedule
from ddpm_fast.training import TrainConfig, load_checkpoint, load_for_sampling, save_checkpoint, train
from ddpm_fast.training.checkpoint import Checkpoint
from ddpm_fast.training.trainer import _loss_weight, ema_decay_at, lr_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"ch": 8, "ch_mult": [1, 2], "attn_resolutions": [8]}


def tiny_config(out_dir, **kw):
    base = dict(steps=6, batch_size=8, ckpt_every=2, sample_n=0, model_kwargs=TINY, lr=1e-3,
                warmup_steps=2, progress=False, metric=False, threads=1, out_dir=str(out_dir))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return take(digits(), range(64))


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    """6 uninterrupted steps: the run every interrupted-and-resumed run must reproduce."""
    return train(tiny_config(tmp_path_factory.mktemp("ref")), data=data)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_resume_after_injected_stop_equals_uninterrupted(data, reference_run, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_5(step, info):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train(tiny_config(tmp_path), data=data, callback=stop_at_5)
    assert load_checkpoint(tmp_path / "last.safetensors").step == 4      # ckpt_every=2
    seen = []
    res = train(tiny_config(tmp_path), data=data, resume=True, callback=lambda s, i: seen.append(s))
    assert seen == [5, 6]                      # no lost and no repeated step
    assert res.step == 6 and len(res.losses) == 6
    assert res.losses == reference_run.losses
    _assert_same_weights(res.model, reference_run.model)
    _assert_same_weights(res.ema, reference_run.ema)


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from ddpm_fast.data import digits
    from ddpm_fast.data.datasets import take
    from ddpm_fast.training import TrainConfig, train
    cfg = TrainConfig(**{cfg!r})
    def kill(step, info):
        if step == 5:
            os.kill(os.getpid(), signal.SIGKILL)    # no cleanup, no atexit, no flush
    train(cfg, data=take(digits(), range(64)), callback=kill)
    print("not killed")
""")


def test_sigkill_mid_run_then_resume_gives_the_same_final_weights(data, reference_run, tmp_path):
    cfg = tiny_config(tmp_path).to_dict()
    script = _KILL_SCRIPT.format(root=ROOT, cfg=cfg)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "last.safetensors")          # loadable after the kill
    assert ckpt.step == 4
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    res = train(tiny_config(tmp_path), data=data, resume=True)
    assert res.step == 6
    _assert_same_weights(res.model, reference_run.model)
    _assert_same_weights(res.ema, reference_run.ema)
    final = load_checkpoint(res.checkpoint)
    assert final.step == 6 and final.losses.shape == (6,)
    model, cfg2, _ = load_for_sampling(res.checkpoint)
    _assert_same_weights(model, reference_run.ema)


def test_resume_refuses_a_different_model_or_data_stream(data, reference_run, tmp_path):
    train(tiny_config(tmp_path, steps=2), data=data)
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_config(tmp_path, steps=4, batch_size=4), data=data, resume=True)
    res = train(tiny_config(tmp_path, steps=3), data=data, resume=True)   # more steps is fine
    assert res.step == 3


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(path, Checkpoint(1, {"a": 1}, lin.state_dict(), lin.state_dict(), opt.state_dict()))
    before = path.read_bytes()
    import safetensors.torch

    def torn_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", torn_write)
    with pytest.raises(OSError):
        save_checkpoint(path, Checkpoint(2, {"a": 2}, lin.state_dict()))
    assert path.read_bytes() == before                     # the old checkpoint is untouched
    assert os.listdir(tmp_path) == ["last.safetensors"]    # and no temporary file is left
    monkeypatch.undo()
    c = load_checkpoint(path)
    assert c.step == 1 and c.config == {"a": 1}
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(c.optimizer)
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(opt2.state_dict()["state"][0][k], opt.state_dict()["state"][0][k])


class NaNAfter(torch.nn.Module):
    """A model whose output turns NaN from the ``bad_from``-th call on."""

    def __init__(self, bad_from, bad_until=10 ** 9):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.calls, self.bad_from, self.bad_until = 0, bad_from, bad_until

    def forward(self, x, t):
        self.calls += 1
        y = self.conv(x)
        return y * float("nan") if self.bad_from <= self.calls < self.bad_until else y


def test_nonfinite_loss_skips_the_step_with_a_warning(data, tmp_path):
    model = NaNAfter(bad_from=3, bad_until=5)           # calls 3 and 4 (steps 2, 3) are NaN
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = train(tiny_config(tmp_path, steps=6, max_nonfinite=3), model=model, data=data)
    assert res.step == 6
    assert [math.isnan(v) for v in res.losses] == [False, False, True, True, False, False]
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert all(torch.isfinite(p).all() for p in res.ema.parameters())


def test_too_many_nonfinite_losses_stop_training(data, tmp_path):
    with pytest.warns(RuntimeWarning), pytest.raises(FloatingPointError, match="3 non-finite"):
        train(tiny_config(tmp_path, steps=10, max_nonfinite=3), model=NaNAfter(bad_from=2), data=data)


@pytest.mark.parametrize("target,gamma", [("epsilon", None), ("sample", 5.0), ("v_prediction", 5.0)])
def test_targets_and_min_snr_train(data, tmp_path, target, gamma):
    res = train(tiny_config(tmp_path, steps=2, prediction_type=target, min_snr_gamma=gamma,
                            ckpt_every=0), data=data)
    assert res.step == 2 and all(math.isfinite(v) for v in res.losses)
    assert load_checkpoint(res.checkpoint).config["prediction_type"] == target


def test_min_snr_weights_match_the_formula():
    table = NoiseSchedule.linear(1000).table()
    t = torch.tensor([0, 10, 500, 999])
    ab = table[:, Col.ALPHA_BAR][t]
    snr = ab / (1 - ab)
    g = 5.0
    torch.testing.assert_close(_loss_weight(t, table, "epsilon", g), (snr.clamp(max=g) / snr).float())
    torch.testing.assert_close(_loss_weight(t, table, "sample", g), snr.clamp(max=g).float())
    torch.testing.assert_close(_loss_weight(t, table, "v_prediction", g), (snr.clamp(max=g) / (snr + 1)).float())
    assert _loss_weight(t, table, "epsilon", None) is None


def test_bf16_autocast_keeps_the_loss_finite_float32(data, tmp_path):
    res = train(tiny_config(tmp_path, steps=2, precision="bf16", ckpt_every=0), data=data)
    assert all(math.isfinite(v) for v in res.losses)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())


def test_lr_warmup_and_ema_decay_schedules():
    c = TrainConfig(lr=1e-3, warmup_steps=4, steps=14, lr_schedule="cosine", min_lr_ratio=0.1)
    lrs = [lr_at(s, c) for s in range(14)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] >= 1e-4
    assert ema_decay_at(0, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(10 ** 6, 0.999) == 0.999


def test_outputs_grid_loss_curve_and_sampling_from_the_checkpoint(data, tmp_path):
    pytest.importorskip("ddpm_fast.sampling")
    from PIL import Image
    res = train(tiny_config(tmp_path, steps=4, sample_every=2, sample_n=4, sample_steps=3), data=data)
    for name in ("samples_0000002.png", "samples.png", "loss.png"):
        assert Image.open(tmp_path / name).size[0] > 0
    assert res.samples.shape == (4, 1, 16, 16)
    assert res.samples.min() >= -1 and res.samples.max() <= 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16", "auto"])
def test_cuda_mixed_precision_trains_and_resumes(data, tmp_path, precision):
    cfg = tiny_config(tmp_path, steps=4, precision=precision, device="cuda", ckpt_every=2, threads=None)
    res = train(cfg, data=data)
    assert res.step == 4 and all(math.isfinite(v) for v in res.losses)
    assert next(res.model.parameters()).dtype == torch.float32
    c = load_checkpoint(res.checkpoint)
    assert (c.scaler is not None) == (precision == "fp16")
    assert train(cfg.replace(steps=5), data=data, resume=True).step == 5
