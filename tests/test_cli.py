"""The CLI: ``ddpm-fast train`` / ``sample`` end to end on a tiny model, the module entry point,
and option parsing."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ddpm_fast.cli import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = json.dumps({"ch": 8, "ch_mult": [1, 2], "attn_resolutions": []})


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "ddpm_fast", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "sample" in out.stdout and "demo" in out.stdout


def test_train_options_mirror_the_config():
    args = build_parser().parse_args(["train", "--steps", "7", "--prediction-type", "v", "--no-progress",
                                      "--model-kwargs", '{"ch": 8}', "--min-snr-gamma", "5", "--resume"])
    assert args.steps == 7 and args.prediction_type == "v" and args.progress is False
    assert args.model_kwargs == {"ch": 8} and args.min_snr_gamma == 5.0 and args.resume is True
    assert build_parser().parse_args(["train"]).lr is None      # unset options keep the config's


def test_train_then_sample_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--steps", "3", "--batch-size", "8", "--model-kwargs", TINY, "--out-dir", str(out),
               "--sample-n", "4", "--sample-steps", "2", "--no-metric", "--no-progress", "--threads", "1",
               "--prediction-type", "eps"])
    assert rc == 0
    assert "trained 3 steps" in capsys.readouterr().out
    ckpt = out / "last.safetensors"
    assert ckpt.is_file() and (out / "samples.png").is_file() and (out / "loss.png").is_file()
    # resume with more steps continues from step 3
    assert main(["train", "--out-dir", str(out), "--steps", "4", "--resume", "--no-progress"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out

    grid = tmp_path / "grid.png"
    rc = main(["sample", "--checkpoint", str(ckpt), "--n", "6", "--seed", "0", "--sampler", "ddim",
               "--steps", "3", "--out", str(grid), "--threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "sampled 6 images" in text and " s " in text          # the time taken
    assert "FD" in text and "confidence" in text                 # the digits metric
    from PIL import Image
    w, h = Image.open(grid).size
    assert w > h and w > 16 * 3          # 6 images: 3 per row, 2 rows


def test_train_on_an_image_folder(tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    rc = main(["train", "--data", str(folder), "--resolution", "8", "--steps", "2", "--batch-size", "4",
               "--model-kwargs", TINY, "--out-dir", str(tmp_path / "run"), "--sample-n", "0",
               "--no-progress", "--threads", "1"])
    assert rc == 0 and "trained 2 steps" in capsys.readouterr().out
    from ddpm_fast.training import load_checkpoint
    c = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert c.extra["image_shape"] == [3, 8, 8] and c.model["conv_in.weight"].shape[1] == 3


def _one_line_error(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_options_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample"])                                     # --checkpoint is required (argparse)
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "missing"), "--no-progress"]) == 1
    line = _one_line_error(capsys)
    assert line.startswith("ddpm-fast train: error:") and str(tmp_path / "missing") in line


@pytest.mark.parametrize("argv,flag", [(["--min-snr-gamma", "-1"], "--min-snr-gamma"),
                                       (["--ema-decay", "1.5"], "--ema-decay"),
                                       (["--threads", "0"], "--threads"),
                                       (["--lr-schedule", "cosinus"], "--lr-schedule"),
                                       (["--T", "20"], "--sample-steps")])
def test_train_option_errors_name_the_flag_in_one_line(tmp_path, capsys, argv, flag):
    """Refused before any data is loaded or any step runs, and printed as the flag to change."""
    rc = main(["train", *argv, "--out-dir", str(tmp_path / "run"), "--no-progress"])
    assert rc == 1
    line = _one_line_error(capsys)
    assert f"error: {flag}: " in line and "--debug" in line
    assert not (tmp_path / "run").exists()


def test_debug_flag_and_env_keep_the_traceback(tmp_path, monkeypatch):
    from ddpm_fast.training import ConfigError
    for argv in (["--debug", "train"], ["train", "--debug"]):
        with pytest.raises(ConfigError, match="min_snr_gamma"):
            main([*argv, "--min-snr-gamma", "0", "--out-dir", str(tmp_path)])
    monkeypatch.setenv("DDPM_FAST_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["train", "--threads", "0", "--out-dir", str(tmp_path)])


def test_train_model_preset_from_the_command_line(tmp_path, capsys):
    """--model tiny used to reach train()'s model= (an nn.Module) and fail with AttributeError."""
    rc = main(["train", "--model", "tiny", "--steps", "1", "--batch-size", "4", "--model-kwargs", TINY,
               "--out-dir", str(tmp_path / "run"), "--sample-n", "0", "--no-progress", "--threads", "1"])
    assert rc == 0 and "trained 1 steps" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    assert main(["train", "--steps", "1", "--batch-size", "4", "--model-kwargs", TINY, "--T", "20",
                 "--out-dir", str(out), "--sample-n", "0", "--no-progress", "--threads", "1"]) == 0
    return out / "last.safetensors"


def test_sample_steps_reach_sample_for_every_sampler(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """--steps with the default ddpm sampler used to be dropped (all T steps ran): the CLI now
    passes it to sample(), which runs it or refuses it, as the Python API does."""
    import torch
    import ddpm_fast.sampling
    seen = []

    def fake_sample(model, shape, **kw):
        seen.append((kw["sampler"], kw["steps"]))
        return torch.zeros(shape)

    monkeypatch.setattr(ddpm_fast.sampling, "sample", fake_sample)
    for sampler in ("ddpm", "ddim", "dpmsolver++", "unipc"):
        rc = main(["sample", "--checkpoint", str(tiny_checkpoint), "--n", "2", "--sampler", sampler,
                   "--steps", "5", "--out", str(tmp_path / "g.png"), "--no-metric"])
        assert rc == 0 and "5 steps" in capsys.readouterr().out
    assert seen == [("ddpm", 5), ("ddim", 5), ("dpmsolver++", 5), ("unipc", 5)]
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--n", "2", "--out", str(tmp_path / "g.png"),
                 "--no-metric"]) == 0
    assert seen[-1] == ("ddpm", None) and "20 steps" in capsys.readouterr().out


def test_sample_steps_with_the_real_sampler_is_run_or_refused(tiny_checkpoint, tmp_path, capsys):
    rc = main(["sample", "--checkpoint", str(tiny_checkpoint), "--n", "2", "--steps", "5",
               "--out", str(tmp_path / "g.png"), "--no-metric", "--threads", "1"])
    if rc == 0:
        assert "(ddpm, 5 steps" in capsys.readouterr().out
    else:
        assert "steps" in _one_line_error(capsys)


def test_sample_with_a_multistep_solver(tiny_checkpoint, tmp_path, capsys):
    for sampler in ("dpmsolver++", "unipc"):
        rc = main(["sample", "--checkpoint", str(tiny_checkpoint), "--n", "2", "--sampler", sampler, "--steps", "8",
                   "--out", str(tmp_path / "g.png"), "--no-metric", "--threads", "1"])
        assert rc == 0 and f"({sampler}, 8 steps" in capsys.readouterr().out
        assert (tmp_path / "g.png").exists()
    # the default 20 steps over the checkpoint's T = 20 visit a timestep twice: one clear line
    rc = main(["sample", "--checkpoint", str(tiny_checkpoint), "--n", "2", "--sampler", "unipc",
               "--out", str(tmp_path / "g.png"), "--no-metric", "--threads", "1"])
    assert rc == 1 and "steps" in _one_line_error(capsys)


@pytest.mark.parametrize("argv,flag", [(["--n", "0"], "--n"), (["--threads", "0"], "--threads"),
                                       (["--batch-size", "0"], "--batch-size"), (["--steps", "0"], "--steps")])
def test_sample_option_errors_name_the_flag(tiny_checkpoint, tmp_path, capsys, argv, flag):
    rc = main(["sample", "--checkpoint", str(tiny_checkpoint), *argv, "--out", str(tmp_path / "g.png")])
    assert rc == 1 and f"error: {flag}: " in _one_line_error(capsys)
