"""``sample(model_dtype=torch.bfloat16)``: the model forward under ``torch.autocast``, the
sampler state x_t (and the returned sample) in float32, on the eager and compiled paths, with
guidance, a multistep solver and foreign models; and the errors for dtypes autocast cannot run.

Tolerance (flash-attention's rule): the bf16-forward sample's error against a float64 run of
the same model must be at most twice that of the plain low-precision alternative, the whole
model cast to bfloat16 (weights and activations), plus a floor of 1e-3 for float32 rounding."""
import pytest
import torch

import ddpm_fast
from ddpm_fast.models.unet import UNet
from ddpm_fast.samplers import arguments

SHAPE = (3, 1, 8, 8)
BF16 = torch.bfloat16


def _unet(**kw) -> UNet:
    """A tiny UNet with every weight random (the stock init zeroes the output conv, which
    would make every model output 0 and any dtype look exact)."""
    torch.manual_seed(0)
    m = UNet.tiny(in_channels=1, resolution=8, ch=16, ch_mult=[1, 2], **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _ddim(model, **kw):
    kw = {"sampler": "ddim", "steps": 5, "seed": 3, "clip_denoised": False, **kw}
    return ddpm_fast.sample(model, kw.pop("shape", SHAPE), **kw)


def _within_bf16_budget(got, model, **kw):
    """got's error vs the float64 run <= 2 x the whole-bf16 model's + 1e-3 (module docstring)."""
    import copy
    ref = _ddim(copy.deepcopy(model).double(), dtype=torch.float64, **kw)
    low = _ddim(copy.deepcopy(model).to(BF16), **kw)
    err, err_low = (got.double() - ref).abs().max(), (low.double() - ref).abs().max()
    assert err <= 2 * err_low + 1e-3, (float(err), float(err_low))
    assert err > 0      # the forward really ran in bf16 (exactness would mean autocast was off)


def test_the_forward_runs_under_autocast_and_the_state_stays_float32():
    unet, seen = _unet(), []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = unet

        def forward(self, x, t):
            out = self.net(x, t)
            on = torch.is_autocast_enabled("cpu")
            seen.append((x.dtype, on, torch.get_autocast_dtype("cpu") if on else None, out.dtype))
            return out

    x = _ddim(Spy(), model_dtype=BF16)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert seen and set(seen) == {(torch.float32, True, BF16, BF16)}   # x_t in float32, output bf16
    seen.clear()
    _ddim(Spy())                                                      # default: no autocast
    assert set(seen) == {(torch.float32, False, None, torch.float32)}


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_model_dtype_is_the_users_own_autocast_wrapper(sampler):
    """model_dtype=bf16 is exactly a user's ``with torch.autocast(...)`` around the model, its
    bf16 output handed to the float32 step as is (bit for bit, eager, both fused steps)."""
    unet = _unet()

    def wrapped(x, t):
        with torch.autocast("cpu", dtype=BF16):
            return unet(x, t)

    kw = dict(sampler=sampler, steps=6, seed=5)
    assert torch.equal(ddpm_fast.sample(unet, SHAPE, model_dtype=BF16, **kw),
                       ddpm_fast.sample(wrapped, SHAPE, **kw))


def test_bf16_forward_is_as_close_to_float64_as_a_bf16_model():
    unet = _unet()
    _within_bf16_budget(_ddim(unet, model_dtype=BF16), unet)
    assert torch.equal(_ddim(unet, model_dtype=torch.float32), _ddim(unet))   # float32: autocast off


def test_bf16_forward_with_guidance_and_a_multistep_solver():
    unet = _unet(num_classes=4)
    y, null = torch.arange(3) % 4, torch.full((3,), 4)
    guide = dict(model_kwargs={"y": y}, uncond_kwargs={"y": null}, guidance_scale=2.0)
    _within_bf16_budget(_ddim(unet, model_dtype=BF16, **guide), unet, **guide)
    x = ddpm_fast.sample(unet, SHAPE, sampler="dpmsolver++", steps=4, seed=1, model_dtype=BF16, **guide)
    f = ddpm_fast.sample(unet, SHAPE, sampler="dpmsolver++", steps=4, seed=1, **guide)
    assert x.dtype == torch.float32 and (x - f).abs().max() < 0.1 * f.abs().max()


def test_bf16_forward_compiled_matches_eager():
    """compile=True: Inductor compiles the model under the same autocast; its bf16 kernels
    round differently from eager's, so compare within the bf16 budget, not bit for bit."""
    unet = _unet()
    comp = _ddim(unet, model_dtype=BF16, compile=True)
    assert comp.dtype == torch.float32
    _within_bf16_budget(comp, unet)


@pytest.mark.parametrize("sampler,mode", [("ddpm", "step"), ("ddim", "loop")])
def test_the_graph_runner_runs_the_model_under_the_same_autocast(sampler, mode):
    """The CUDA-graph runner's bookkeeping on CPU (its capture records the Python function, as
    tests/test_fast_sampler.py's EagerReplay): autocast around the captured model call, the bf16
    output into the in-place step (DDPM: reverse_step_out writing x_t), equal to the eager path."""
    from ddpm_fast.samplers.graph import GraphSampler
    from ddpm_fast.samplers.settings import make_spec, resolve

    class EagerReplay(GraphSampler):
        needs_cuda = False

        def _record(self, fn):
            return fn

    unet, sched = _unet(), ddpm_fast.NoiseSchedule.linear(1000)
    s = resolve(sched, {"sampler": sampler, "steps": 6})[1]
    spec = make_spec(sched, s, SHAPE, torch.device("cpu"), torch.float32, 0, None, True, None, BF16)
    x, _, bad = EagerReplay(spec, unet, {}, None, mode).run(7, None, {}, False, 0)
    want = ddpm_fast.sample(unet, SHAPE, sampler=sampler, steps=6, seed=7, model_dtype=BF16)
    assert x.dtype == torch.float32 and int(bad) == -1
    assert torch.equal(x, want) and not torch.equal(x, ddpm_fast.sample(unet, SHAPE, sampler=sampler, steps=6, seed=7))


def test_bf16_forward_of_foreign_models():
    """diffusers' UNet2DModel (``.sample`` output, attention) within the bf16 budget; lucidrains'
    Unet computes its time embedding in float32 whatever its weights (so it has no float64 or
    all-bf16 run to compare with): there, model_dtype equals the user's own autocast wrapper."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8,
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    _within_bf16_budget(_ddim(net, model_dtype=BF16, steps=4), net, steps=4)
    pytest.importorskip("einops")
    from tools.lucidrains_stubs import stub_lucidrains_training_deps
    stub_lucidrains_training_deps()
    ddp = pytest.importorskip("denoising_diffusion_pytorch")
    torch.manual_seed(0)
    unet = ddp.Unet(dim=8, dim_mults=(1, 2), channels=1, attn_heads=1, attn_dim_head=8).eval()

    def wrapped(x, t):
        with torch.autocast("cpu", dtype=BF16):
            return unet(x, t)

    x = _ddim(unet, model_dtype=BF16, steps=4)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, _ddim(wrapped, steps=4)) and not torch.equal(x, _ddim(unet, steps=4))


@pytest.mark.parametrize("bad,error,words", [
    (torch.float64, ValueError, "not an autocast precision"),
    (torch.int32, TypeError, "torch.bfloat16 or torch.float16"),
    ("bf16", TypeError, "torch.bfloat16"),
    (1.5, TypeError, "torch.bfloat16 or torch.float16"),
])
def test_model_dtypes_autocast_cannot_run_are_refused(bad, error, words):
    calls = []
    with pytest.raises(error, match=words):
        ddpm_fast.sample(lambda x, t: calls.append(1) or x, SHAPE, model_dtype=bad)
    assert not calls       # refused before any model call


def test_a_device_whose_autocast_lacks_the_dtype_is_refused(monkeypatch):
    # the real probe: CPU autocast has no float64, an unknown device type has no autocast at all
    assert arguments._autocast_supports("cpu", BF16)
    assert not arguments._autocast_supports("cpu", torch.float64)
    assert not arguments._autocast_supports("meta", BF16)
    monkeypatch.setattr(arguments, "_autocast_supports", lambda device_type, dtype: False)
    with pytest.raises(ValueError, match="torch.autocast on 'cpu' does not support torch.float16"):
        ddpm_fast.sample(lambda x, t: x, SHAPE, model_dtype=torch.float16)


def test_the_cache_keys_compiled_samplers_by_model_dtype():
    from ddpm_fast.samplers import cache
    from ddpm_fast.samplers.settings import make_spec, resolve
    unet, sched = _unet(), ddpm_fast.NoiseSchedule.linear(1000)
    keys = []
    for md in (None, BF16):
        s = resolve(sched, {"sampler": "ddim", "steps": 4})[1]
        spec = make_spec(sched, s, SHAPE, torch.device("cpu"), torch.float32, 0, None, True, None, md)
        keys.append(cache.make_key(unet, spec, "sched", (), ()))
    assert keys[0]["model dtype"] is None and keys[1]["model dtype"] == BF16 and keys[0] != keys[1]


def test_cli_model_dtype_reaches_sample(tmp_path, monkeypatch, capsys):
    """``ddpm-fast sample --model-dtype bf16`` passes torch.bfloat16 (fp32: None) to sample()."""
    import ddpm_fast.sampling
    from ddpm_fast.cli import main
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--steps", "1", "--batch-size", "4", "--model-kwargs", '{"ch": 8, "ch_mult": [1]}',
                 "--T", "10", "--out-dir", str(ckpt), "--sample-n", "0", "--no-progress", "--threads", "1"]) == 0
    real, seen = ddpm_fast.sampling.sample, []

    def spy(model, shape, **kw):
        seen.append(kw["model_dtype"])
        return real(model, shape, **kw)

    monkeypatch.setattr(ddpm_fast.sampling, "sample", spy)
    for flag in ("bf16", "fp32"):
        rc = main(["sample", "--checkpoint", str(ckpt / "last.safetensors"), "--n", "2", "--sampler", "ddim",
                   "--steps", "2", "--model-dtype", flag, "--out", str(tmp_path / "g.png"), "--no-metric"])
        assert rc == 0
    out = capsys.readouterr().out
    assert seen == [BF16, None] and out.count("model forward bf16") == 1
    with pytest.raises(SystemExit):       # argparse names the choices
        main(["sample", "--checkpoint", str(ckpt / "last.safetensors"), "--model-dtype", "f64"])
    assert "--model-dtype: invalid choice" in capsys.readouterr().err
