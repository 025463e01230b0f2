"""Schedule math against independent truths: float64 closed forms written out here with Python
floats (not torch's cumprod), diffusers' own beta and embedding functions, and DDIM through
``sample()`` against a float64 loop written from Song et al. (2021), eq. 12."""
import math

import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule
from ddpm_fast.schedule import Col

diffusers = pytest.importorskip("diffusers")
from diffusers.models.embeddings import get_timestep_embedding  # noqa: E402
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr  # noqa: E402


def _closed_forms(betas):
    """Per t: (β̃_t, σ_large, √(1-ᾱ_t), √(1/ᾱ_t - 1), log β̃ clipped), with Python floats."""
    rows, ab_prev = [], 1.0
    ab_list = []
    for b in betas:
        ab = ab_prev * (1.0 - b)
        ab_list.append((ab, ab_prev))
        ab_prev = ab
    post = [b * (1 - abp) / (1 - ab) for b, (ab, abp) in zip(betas, ab_list)]
    for t, (b, (ab, _)) in enumerate(zip(betas, ab_list)):
        logvar = math.log(post[1] if t == 0 else post[t])   # improved-diffusion's clip at t = 0
        rows.append((post[t], math.sqrt(b), math.sqrt(1 - ab), math.sqrt(1 / ab - 1), logvar))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["linear", "cosine", "scaled_linear"])
def test_table_columns_equal_float64_closed_forms(kind):
    s = NoiseSchedule.make(kind, 300)
    truth = _closed_forms(s.betas.tolist())
    cols = [Col.POSTERIOR_VARIANCE, Col.SIGMA_LARGE, Col.SQRT_ONE_MINUS_ALPHA_BAR,
            Col.SQRT_RECIPM1_ALPHA_BAR, Col.POSTERIOR_LOG_VARIANCE_CLIPPED]
    ours = torch.stack([s.column(c) for c in cols], 1)
    torch.testing.assert_close(ours, truth, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s.column(Col.SIGMA_SMALL), truth[:, 0].sqrt(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind,diffusers_name", [("scaled_linear", "scaled_linear"),
                                                 ("diffusers_sigmoid", "sigmoid")])
def test_betas_equal_diffusers(kind, diffusers_name):
    kw = dict(beta_start=0.00085, beta_end=0.012)
    ours = NoiseSchedule.make(kind, 1000, **kw).betas
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name, **kw).betas
    torch.testing.assert_close(ours.float(), theirs, rtol=2e-6, atol=1e-9)


def test_cosine_betas_equal_diffusers_betas_for_alpha_bar():
    torch.testing.assert_close(NoiseSchedule.cosine(1000).betas.float(), betas_for_alpha_bar(1000),
                               rtol=1e-5, atol=1e-8)


def test_zero_terminal_snr_rescale_equals_diffusers():
    base = NoiseSchedule.scaled_linear(1000).betas
    ours = NoiseSchedule.scaled_linear(1000, zero_terminal_snr=True).betas
    torch.testing.assert_close(ours, rescale_zero_terminal_snr(base.clone()), rtol=1e-12, atol=1e-15)
    assert NoiseSchedule.scaled_linear(1000, zero_terminal_snr=True).alphas_cumprod[-1] == 0


@pytest.mark.parametrize("dim", [32, 33, 128])
@pytest.mark.parametrize("flip,shift", [(False, 1.0), (True, 0.0)])
def test_sinusoidal_embedding_equals_diffusers(dim, flip, shift):
    t = torch.tensor([0, 1, 17, 500, 999])
    ours = ddpm_fast.sinusoidal_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    theirs = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


class _Eps(torch.nn.Module):
    def forward(self, x, t):
        tt = torch.as_tensor(t).double().reshape(-1, *([1] * (x.dim() - 1)))
        return torch.tanh(x.double() * 1.3 + torch.sin(tt / 9.0)).to(x.dtype)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_through_sample_equals_an_independent_float64_loop(clip, spacing):
    """Our own schedule's rules: land on the next visited timestep, ε re-derived from the
    clipped x0, final ᾱ = 1."""
    T, steps, shape = 200, 17, (2, 3, 4, 4)
    s = NoiseSchedule.linear(T)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = _Eps()
    ours = ddpm_fast.sample(model, shape, schedule=s, sampler="ddim", steps=steps, x_T=x_T,
                            clip_denoised=clip, timestep_spacing=spacing, dtype=torch.float64)
    betas = s.betas.tolist()
    ab, acc = [], 1.0
    for b in betas:
        acc *= 1 - b
        ab.append(acc)
    if spacing == "leading":
        ts = [i * (T // steps) for i in range(steps)][::-1]
    else:
        ts = [round(T - i * T / steps) - 1 for i in range(steps)]
    x = x_T.clone()
    for i, t in enumerate(ts):
        a = ab[t]
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        eps = model(x, torch.tensor(t))
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)
