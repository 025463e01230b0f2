"""The CLI for class-conditional models: ``train --conditional --cond-drop``, ``sample --class
K|all|none --guidance W`` (parsing, what reaches sample(), the one-line errors), and the demo:
a fixed run that gives the same model and grid for the same command."""
import json
import re

import pytest
import torch

from ddpm_fast.cli import build_parser, main

TINY = json.dumps({"ch": 8, "ch_mult": [1, 2], "attn_resolutions": []})


def _one_line_error(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_conditional_train_options_parse():
    args = build_parser().parse_args(["train", "--conditional", "--cond-drop", "0.2", "--sample-guidance", "2"])
    assert args.conditional is True and args.cond_drop_prob == 0.2 and args.sample_guidance == 2.0
    assert build_parser().parse_args(["train", "--cond-drop-prob", "0.3"]).cond_drop_prob == 0.3
    assert build_parser().parse_args(["train"]).conditional is None        # the config's default
    args = build_parser().parse_args(["sample", "--checkpoint", "c", "--class", "7", "--guidance", "3"])
    assert args.class_ == "7" and args.guidance == 3.0 and args.n is None


def test_cond_drop_error_names_the_flag(tmp_path, capsys):
    rc = main(["train", "--conditional", "--cond-drop", "1.5", "--out-dir", str(tmp_path / "run"), "--no-progress"])
    assert rc == 1
    line = _one_line_error(capsys)
    assert "error: --cond-drop: must be in [0, 1]" in line and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond")
    # 3 steps: the zero-initialised output convolutions make a UNet ignore y for its first 2
    # steps, and sample() refuses guidance for a model that ignores its labels
    common = ["--steps", "3", "--batch-size", "4", "--model-kwargs", TINY, "--T", "20", "--sample-n", "0",
              "--no-progress", "--threads", "1"]
    assert main(["train", "--conditional", *common, "--out-dir", str(out / "c")]) == 0
    assert main(["train", *common, "--out-dir", str(out / "u")]) == 0
    return out / "c" / "last.safetensors", out / "u" / "last.safetensors"


@pytest.fixture
def fake_sample(monkeypatch):
    import ddpm_fast.sampling
    calls = []

    def fake(model, shape, **kw):
        calls.append((shape, kw))
        return torch.zeros(shape)

    monkeypatch.setattr(ddpm_fast.sampling, "sample", fake)
    return calls


def test_class_and_guidance_reach_sample(checkpoints, tmp_path, fake_sample, capsys):
    cond, _ = checkpoints
    rc = main(["sample", "--checkpoint", str(cond), "--class", "7", "--guidance", "3", "--n", "5",
               "--out", str(tmp_path / "g.png"), "--no-metric"])
    assert rc == 0 and "sampled 5 images of class 7 (guidance 3)" in capsys.readouterr().out
    shape, kw = fake_sample[-1]
    assert shape[0] == 5 and kw["model_kwargs"]["y"].tolist() == [7] * 5
    assert kw["guidance_scale"] == 3.0 and kw["uncond_kwargs"]["y"].tolist() == [10] * 5   # the null class
    # guidance 1 (the default) is the conditional model alone: no unconditional pass
    assert main(["sample", "--checkpoint", str(cond), "--class", "0", "--n", "2", "--out", str(tmp_path / "g.png"),
                 "--no-metric"]) == 0
    assert "guidance_scale" not in fake_sample[-1][1]
    assert main(["sample", "--checkpoint", str(cond), "--class", "none", "--n", "3", "--out",
                 str(tmp_path / "g.png"), "--no-metric"]) == 0
    assert fake_sample[-1][1]["model_kwargs"]["y"].tolist() == [10] * 3


def test_class_all_draws_one_row_per_class(checkpoints, tmp_path, capsys):
    from PIL import Image
    cond, _ = checkpoints
    grid = tmp_path / "all.png"
    rc = main(["sample", "--checkpoint", str(cond), "--class", "all", "--n", "2", "--guidance", "3",
               "--sampler", "ddim", "--steps", "2", "--out", str(grid), "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and "sampled 20 images (2 per class, one row per class, guidance 3)" in text
    assert "class accuracy" in text                               # the metric scores the requested classes
    w, h = Image.open(grid).size
    assert (w, h) == (4 * (2 * 18 + 2), 4 * (10 * 18 + 2))      # 2 columns, 10 rows of 16 px + 2 padding, x4
    # the same for the default --class on a conditional checkpoint
    assert main(["sample", "--checkpoint", str(cond), "--n", "1", "--sampler", "ddim", "--steps", "2",
                 "--out", str(grid), "--no-metric", "--threads", "1"]) == 0
    assert "sampled 10 images (1 per class" in capsys.readouterr().out


@pytest.mark.parametrize("argv,flag,why", [
    (["--class", "10"], "--class", r"must be a class in 0\.\.9, 'all' or 'none', got '10'"),
    (["--class", "seven"], "--class", "must be a class in 0..9"),
    (["--class", "3", "--guidance", "-1"], "--guidance", "must be a finite number >= 0"),
    (["--class", "3", "--guidance", "nan"], "--guidance", "must be a finite number >= 0"),
    (["--class", "none", "--guidance", "3"], "--guidance", "guidance needs a class"),
])
def test_bad_class_or_guidance_is_one_line_naming_the_flag(checkpoints, tmp_path, capsys, argv, flag, why):
    rc = main(["sample", "--checkpoint", str(checkpoints[0]), *argv, "--out", str(tmp_path / "g.png")])
    assert rc == 1
    line = _one_line_error(capsys)
    assert f"error: {flag}: " in line and re.search(why, line), line


@pytest.mark.parametrize("argv,flag", [(["--class", "3"], "--class"), (["--guidance", "3"], "--guidance")])
def test_class_or_guidance_on_an_unconditional_checkpoint_is_refused(checkpoints, tmp_path, capsys, argv, flag):
    rc = main(["sample", "--checkpoint", str(checkpoints[1]), *argv, "--out", str(tmp_path / "g.png")])
    assert rc == 1 and f"error: {flag}: the checkpoint is unconditional" in _one_line_error(capsys)


def test_demo_is_a_fixed_run_with_a_progress_bar_and_one_row_per_class(tmp_path, capsys):
    from PIL import Image
    from ddpm_fast.training import load_checkpoint
    from ddpm_fast.training.demo import DEMO_CONFIG, DEMO_GUIDANCE, DEMO_GUIDANCE_RESCALE, run_demo
    assert DEMO_CONFIG["steps"] == 600 and DEMO_CONFIG["threads"] == 1 and DEMO_CONFIG["conditional"]
    assert DEMO_GUIDANCE == 3.0 and DEMO_GUIDANCE_RESCALE == 1.0
    runs = []
    for name in ("a", "b"):
        assert run_demo(out_dir=str(tmp_path / name), steps=2, per_class=1) == 0
        out, err = capsys.readouterr()
        runs.append(tmp_path / name)
    assert re.search(r"train: 100%.*2/2 \[\d\d:\d\d<\d\d:\d\d", err)   # tqdm: elapsed<remaining
    assert "trained 2 steps" in out and "one row per class" in out and "guidance 3" in out
    assert "class accuracy" in out and "CPU time" in out
    # the guided samples against the unconditional model's (issue 16's targets, printed)
    assert re.search(r"guidance 3, rescale 1 vs the unconditional model \(null class, same seed, 10 samples\): "
                     r"FD \d+\.\d+ vs \d+\.\d+ -> \d+\.\d+x \(target <= 1\.2x\), class accuracy \d\.\d{3} "
                     r"\(target >= 0\.95\)", out), out
    # the speed line: the fastest path named, the reference backend and (when installed)
    # diffusers' loop on the same model, each with its ratio and how far its samples are
    line = next(ln for ln in out.splitlines() if ln.startswith("speed on 2 digits"))
    num = r"\d+\.\d+"
    assert re.match(rf"speed on 2 digits \(ddim, 50 steps, guidance 3 rescaled 1, 1 thread, median of 3\): "
                    rf"ddpm_fast \(compiled, fused \w+ step, Inductor's norms; first call, which compiles, {num} s\) {num} s; "
                    rf"reference backend {num} s -> {num}x "
                    rf"\(max \|diff\| ([\d.e+-]+)\); ", line), line
    diffs = [float(d) for d in re.findall(r"max \|diff\| ([\d.e+-]+)\)", line)]
    assert diffs[0] < 1e-4                      # the reference backend: the same samples
    try:
        import diffusers  # noqa: F401
        assert re.search(rf"; diffusers DDIMScheduler loop {num} s -> {num}x \(max", line), line
        assert diffs[1] < 1e-3                  # diffusers' loop: the same DDIM (float32 betas)
    except ImportError:
        assert line.endswith("diffusers not installed (no loop to compare)")
    a, b = (load_checkpoint(r / "last.safetensors") for r in runs)
    assert a.step == b.step == 2 and a.extra["num_classes"] == 10
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    assert (runs[0] / "samples.png").read_bytes() == (runs[1] / "samples.png").read_bytes()
    w, h = Image.open(runs[0] / "samples.png").size
    assert (w, h) == (4 * 20, 4 * (10 * 18 + 2))                   # one column, ten rows
    report = json.loads((runs[0] / "demo.json").read_text())
    assert report["steps"] == 2 and 0 <= report["quality"]["class_accuracy"] <= 1
    assert report["guidance_rescale"] == 1.0 and report["unconditional_quality"]["frechet"] > 0


def test_a_folder_trained_checkpoint_takes_class_names(tmp_path, fake_sample, capsys):
    """An image folder's sub-folder names are stored with the checkpoint: ``--class`` takes a
    name (looked up before numbers: a folder named "10" is that folder), the summary names it."""
    import numpy as np
    from PIL import Image
    for k, name in enumerate(["cat", "10", "2"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * k + i, np.uint8), "L").save(tmp_path / "data" / name / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "--conditional", "--data", str(tmp_path / "data"), "--resolution", "8", "--steps", "3",
                 "--batch-size", "4", "--model-kwargs", TINY, "--T", "20", "--sample-n", "0", "--no-progress",
                 "--threads", "1", "--out-dir", str(out)]) == 0
    ckpt = str(out / "last.safetensors")
    capsys.readouterr()
    sorted_names = ["10", "2", "cat"]          # sorted sub-folder names are the labels 0, 1, 2
    for choice, k in (("cat", 2), ("10", 0), ("2", 1), ("1", 1)):
        assert main(["sample", "--checkpoint", ckpt, "--class", choice, "--n", "2", "--out", str(tmp_path / "g.png"),
                     "--no-metric"]) == 0
        assert fake_sample[-1][1]["model_kwargs"]["y"].tolist() == [k, k]
        assert f"of class {k} ({sorted_names[k]})" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", ckpt, "--class", "dog", "--out", str(tmp_path / "g.png")]) == 1
    line = _one_line_error(capsys)
    assert "--class: must be a class in 0..2, or a name: 10, 2, cat" in line
