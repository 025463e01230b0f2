"""Parity with diffusers: same model output + same injected noise -> same result.

DDPMScheduler.step / DDIMScheduler.step / add_noise against our reference ops at every
timestep, and a whole 50-step DDPM loop on a small random UNet2DModel against ddpm_fast.sample.
diffusers keeps its schedule in float32; ours is float64, hence the 1e-5 relative tolerance.
"""
import pytest
import torch

from ddpm_fast import NoiseSchedule, ddim_step, q_sample, reverse_step
from ddpm_fast.noise import STREAM_STEP, philox_normal

diffusers = pytest.importorskip("diffusers")
T = 1000
RTOL = 1e-5


def close(ours, ref):
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=RTOL * ref.abs().max().item())


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("var", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [True, False])
def test_reverse_step_equals_ddpm_scheduler_at_every_t(pred, var, clip, monkeypatch):
    """diffusers computes beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} in float32, which cancels at
    small t (up to ~3e-3 relative error there). So: diffusers' own algorithm run in float64 is the
    truth; ours must be within 1e-5 of it everywhere, and may differ from diffusers' float32
    result by no more than diffusers' own error plus 1e-5 (at most t that is just 1e-5)."""
    sch = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type=pred, variance_type=var,
                                  clip_sample=clip)
    schedule = NoiseSchedule.from_diffusers(sch)
    x, m, noise = torch.randn(T, 3, 4, 4), torch.randn(T, 3, 4, 4), torch.randn(T, 3, 4, 4)
    ref32 = _diffusers_steps(sch, x, m, noise, monkeypatch)
    sch.alphas_cumprod, sch.one = sch.alphas_cumprod.double(), torch.tensor(1.0, dtype=torch.float64)
    truth = _diffusers_steps(sch, x.double(), m.double(), noise.double(), monkeypatch)
    ours = reverse_step(x, m, torch.arange(T), schedule, noise=noise, prediction_type=pred,
                        variance_type=var, clip_denoised=clip, backend="reference")
    scale = truth.abs().max().item()
    assert (ours.double() - truth).abs().max().item() <= RTOL * scale
    own_error = (ref32.double() - truth).abs()
    assert ((ours - ref32).double().abs() <= own_error + RTOL * scale).all()
    accurate = own_error.flatten(1).amax(1) < 1e-6 * scale   # timesteps where diffusers is exact
    assert accurate.sum() > T // 2
    close(ours[accurate], ref32[accurate])


def _diffusers_steps(sch, x, m, noise, monkeypatch):
    """DDPMScheduler.step at t = b for sample b, with noise[b] injected as its random draw."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod
    out = []
    for t in range(T):
        monkeypatch.setattr(ddpm_mod, "randn_tensor", lambda shape, _z=noise[t:t + 1], **kw: _z)
        out.append(sch.step(m[t:t + 1], t, x[t:t + 1]).prev_sample)
    return torch.cat(out)


def test_q_sample_equals_add_noise():
    sch = diffusers.DDPMScheduler(num_train_timesteps=T)
    x0 = torch.randn(64, 3, 8, 8)
    noise = torch.randn_like(x0)
    t = torch.randint(0, T, (64,))
    close(q_sample(x0, t, NoiseSchedule.from_diffusers(sch), noise, backend="reference"),
          sch.add_noise(x0, noise, t))


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("alpha_to_one", [True, False])
def test_ddim_step_equals_ddim_scheduler(pred, eta, clip, alpha_to_one):
    sch = diffusers.DDIMScheduler(num_train_timesteps=T, prediction_type=pred, clip_sample=clip,
                                  set_alpha_to_one=alpha_to_one)
    sch.set_timesteps(50)
    schedule = NoiseSchedule.from_diffusers(sch)
    final = 1.0 if alpha_to_one else schedule.alphas_cumprod[0].item()
    ts = sch.timesteps.tolist()
    for i, t in enumerate(ts):
        x, m, z = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        ref = sch.step(m, t, x, eta=eta, use_clipped_model_output=clip, variance_noise=z).prev_sample
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ours = ddim_step(x, m, t, t_prev, schedule, eta=eta, noise=z if eta else None,
                         prediction_type=pred, clip_denoised=clip, final_alpha_bar=final,
                         backend="reference")
        close(ours, ref)


def _tiny_unet2d():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def test_whole_50_step_loop_equals_diffusers_loop(monkeypatch):
    """diffusers' own loop (the one its users write), fed our noise, vs ddpm_fast.sample."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod
    import ddpm_fast
    unet = _tiny_unet2d()
    sch = diffusers.DDPMScheduler(num_train_timesteps=50)
    sch.set_timesteps(50)
    seed, shape = 7, (3, 3, 8, 8)
    current = {}
    monkeypatch.setattr(ddpm_mod, "randn_tensor", lambda s, **kw: philox_normal(
        seed, tuple(s), current["t"], 0, STREAM_STEP))
    x = ddpm_fast.ops.randn(shape, seed, stream=0)
    with torch.no_grad():
        for t in sch.timesteps:
            current["t"] = int(t)
            x = sch.step(unet(x, t).sample, t, x).prev_sample
    ours = ddpm_fast.sample(unet, shape, schedule=NoiseSchedule.from_diffusers(sch), seed=seed,
                            backend="reference")
    err = (ours - x).abs().max().item()
    assert err <= 1e-4, f"max abs difference {err:.3g} after 50 steps"
