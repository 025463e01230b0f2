"""The drop-in contract for lucidrains' GaussianDiffusion: ``ddpm_fast.sample(diffusion, ...)``
reproduces its own ``ddim_sample`` / ``p_sample_loop`` from the same initial noise.

The expected values come from the real ``denoising_diffusion_pytorch`` code (requirements-dev
pins it; `make deps` installs it without its training-only dependencies). Those it imports at
module level — torchvision, accelerate, ema_pytorch, pytorch_fid — are stubbed when missing
(tools/lucidrains_stubs.py): sampling never touches them.
"""
import pytest
import torch

import ddpm_fast
from ddpm_fast.noise import STREAM_STEP, philox_normal
from ddpm_fast.samplers.lucidrains import ddim_times
from tools.lucidrains_stubs import stub_lucidrains_training_deps

pytest.importorskip("einops")

stub_lucidrains_training_deps()
ddp = pytest.importorskip("denoising_diffusion_pytorch")
SHAPE = (2, 3, 8, 8)


def _diffusion(objective, timesteps, sampling_timesteps, eta=0.0):
    torch.manual_seed(0)
    unet = ddp.Unet(dim=8, dim_mults=(1, 2), channels=3, attn_heads=1, attn_dim_head=8)
    return ddp.GaussianDiffusion(unet, image_size=8, timesteps=timesteps, objective=objective,
                                 sampling_timesteps=sampling_timesteps, ddim_sampling_eta=eta).eval()


def _their_sample(diffusion, x_T, noises, monkeypatch):
    """GaussianDiffusion.sample with torch.randn giving x_T and randn_like the given noises."""
    it = iter(noises)
    monkeypatch.setattr(torch, "randn", lambda *a, **k: x_T.clone())
    monkeypatch.setattr(torch, "randn_like", lambda x, **k: next(it).to(x.dtype))
    with torch.no_grad():
        return diffusion.sample(batch_size=SHAPE[0])


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_sample_from_the_same_noise(objective, eta, monkeypatch):
    T, S, seed = 100, 11, 3
    diffusion = _diffusion(objective, T, S, eta)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    times = ddim_times(T, S)
    ours = ddpm_fast.sample(diffusion, SHAPE, x_T=x_T, seed=seed)
    noises = [philox_normal(seed, SHAPE, t, 0, STREAM_STEP) for t in times[:-1]]
    theirs = _their_sample(diffusion, x_T, noises, monkeypatch)
    assert ((ours + 1) / 2 - theirs).abs().max().item() <= 1e-4


def test_ddim_sample_in_float32_on_every_backend(monkeypatch):
    from ddpm_fast.ops import dispatch
    T, S = 100, 11
    diffusion = _diffusion("pred_v", T, S)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    zeros = [torch.zeros(SHAPE)] * (S - 1)   # eta = 0: its noise is multiplied by 0
    theirs = _their_sample(diffusion, x_T, zeros, monkeypatch)
    monkeypatch.undo()
    for backend in ("reference", "cpp", "triton"):
        if dispatch.unavailable_reason(backend, "cpu") is None:
            ours = ddpm_fast.sample(diffusion, SHAPE, x_T=x_T, backend=backend)
            assert ((ours + 1) / 2 - theirs).abs().max().item() <= 1e-4, backend


def test_p_sample_loop_from_the_same_noise(monkeypatch):
    T, seed = 30, 5
    diffusion = _diffusion("pred_noise", T, None)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    ours = ddpm_fast.sample(diffusion, SHAPE, x_T=x_T, seed=seed)
    noises = [philox_normal(seed, SHAPE, t, 0, STREAM_STEP) for t in range(T - 1, 0, -1)]
    theirs = _their_sample(diffusion, x_T, noises, monkeypatch)
    assert ((ours + 1) / 2 - theirs).abs().max().item() <= 1e-4


def test_its_settings_are_read():
    from ddpm_fast.samplers.settings import resolve_model
    diffusion = _diffusion("pred_v", 100, 11, eta=0.3)
    net, schedule, s = resolve_model(diffusion, None, {})
    assert net is diffusion.model
    assert (s["sampler"], s["prediction_type"], s["eta"]) == ("ddim", "v_prediction", 0.3)
    assert s["timesteps"] == ddim_times(100, 11) and s["use_clipped_model_output"]
    torch.testing.assert_close(schedule.alphas_cumprod, diffusion.alphas_cumprod.double(), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="own schedule"):
        ddpm_fast.sample(diffusion, SHAPE, schedule=ddpm_fast.NoiseSchedule.linear(100), seed=0)


def test_self_conditioning_is_refused():
    torch.manual_seed(0)
    unet = ddp.Unet(dim=8, dim_mults=(1, 2), channels=3, attn_heads=1, attn_dim_head=8, self_condition=True)
    diffusion = ddp.GaussianDiffusion(unet, image_size=8, timesteps=20)
    with pytest.raises(ValueError, match="self_condition"):
        ddpm_fast.sample(diffusion, SHAPE, seed=0)
