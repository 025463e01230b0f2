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


def test_bad_options_fail_clearly(tmp_path):
    with pytest.raises(SystemExit):
        main(["sample"])                                     # --checkpoint is required
    with pytest.raises(FileNotFoundError):
        main(["train", "--data", str(tmp_path / "missing"), "--no-progress"])
