"""ddpm_fast.sample: drop-in for existing models, reproducibility, and clear errors."""
import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule, reverse_step
from ddpm_fast.noise import STREAM_INIT, philox_normal
from toy_models import ClassConditional, ElementwiseEps

SCHED = NoiseSchedule.linear(20)


class LucidrainsStyleUnet(torch.nn.Module):
    """lucidrains' Unet calling convention: forward(x, time, x_self_cond=None)."""

    def __init__(self, ch=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, time, x_self_cond=None):
        return self.conv(x) + time.float().view(-1, 1, 1, 1) / 1000


def manual_loop(model, shape, seed, schedule, **kw):
    """The sampler written out by hand from the public ops (what sample() must equal)."""
    x = philox_normal(seed, shape, 0, 0, STREAM_INIT)
    for t in range(schedule.T - 1, -1, -1):
        eps = model(x, torch.full((shape[0],), t))
        x = reverse_step(x, eps, t, schedule, seed=seed, backend="reference", **kw)
    return x


def test_sample_equals_the_manual_loop():
    m = ElementwiseEps()
    out = ddpm_fast.sample(m, (3, 2, 4, 4), schedule=SCHED, seed=11, backend="reference")
    torch.testing.assert_close(out, manual_loop(m, (3, 2, 4, 4), 11, SCHED), rtol=0, atol=0)
    fused = ddpm_fast.sample(m, (3, 2, 4, 4), schedule=SCHED, seed=11)  # auto: fastest backend here
    torch.testing.assert_close(fused, out, rtol=0, atol=1e-5)
    assert out.dtype == torch.float32 and out.abs().max() <= 1.5


def test_sample_i_is_the_same_at_any_batch_size_chunk_or_offset():
    """diffusers #6222: our counter-based noise keeps sample i fixed for batch 1, 7, 16."""
    m = ElementwiseEps()
    full = ddpm_fast.sample(m, (16, 1, 3, 3), schedule=SCHED, seed=3, backend="reference")
    assert torch.equal(ddpm_fast.sample(m, (7, 1, 3, 3), schedule=SCHED, seed=3, backend="reference"), full[:7])
    assert torch.equal(ddpm_fast.sample(m, (16, 1, 3, 3), schedule=SCHED, seed=3, chunk_size=5,
                                        backend="reference"), full)
    shard = ddpm_fast.sample(m, (4, 1, 3, 3), schedule=SCHED, seed=3, sample_offset=9, backend="reference")
    assert torch.equal(shard, full[9:13])


def test_seeds_differ_and_repeat():
    m = ElementwiseEps()
    a = ddpm_fast.sample(m, (2, 1, 4, 4), schedule=SCHED, seed=1, backend="reference")
    b = ddpm_fast.sample(m, (2, 1, 4, 4), schedule=SCHED, seed=2, backend="reference")
    c = ddpm_fast.sample(m, (2, 1, 4, 4), schedule=SCHED, seed=1, backend="reference")
    assert not torch.equal(a, b) and torch.equal(a, c)


def test_seeded_sampling_leaves_the_users_rng_alone():
    state = torch.get_rng_state()
    ddpm_fast.sample(ElementwiseEps(), (2, 1, 4, 4), schedule=SCHED, seed=1, backend="reference")
    assert torch.equal(state, torch.get_rng_state())


def test_diffusers_unet2d_model_drops_in():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4, num_class_embeds=10,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    y = torch.tensor([1, 7])
    out = ddpm_fast.sample(unet, (2, 1, 8, 8), schedule=SCHED, seed=0, model_kwargs={"class_labels": y})
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    # chunking slices the per-sample class labels along with the batch
    chunked = ddpm_fast.sample(unet, (2, 1, 8, 8), schedule=SCHED, seed=0, chunk_size=1,
                               model_kwargs={"class_labels": y})
    torch.testing.assert_close(chunked, out, rtol=1e-5, atol=1e-5)


def test_lucidrains_style_and_class_conditional_models():
    out = ddpm_fast.sample(LucidrainsStyleUnet(), (2, 3, 8, 8), schedule=SCHED, seed=0,
                           prediction_type="v_prediction")
    assert out.shape == (2, 3, 8, 8)
    y = torch.tensor([0, 9, 3])
    model = ClassConditional(3)
    full = ddpm_fast.sample(model, (3, 3, 4, 4), schedule=SCHED, seed=0, model_kwargs={"y": y})
    part = ddpm_fast.sample(model, (2, 3, 4, 4), schedule=SCHED, seed=0, sample_offset=1,
                            model_kwargs={"y": y[1:]})
    assert torch.equal(full[1:], part)


def test_plain_function_model_and_intermediates():
    out, inter = ddpm_fast.sample(lambda x, t: torch.zeros_like(x), (2, 1, 4, 4), schedule=SCHED, seed=0,
                                  return_intermediates=True, intermediate_every=5)
    assert len(inter) == 4 and torch.equal(inter[-1], out)


def test_ddim_prime_step_count_and_x_T():
    m = ElementwiseEps()
    s = NoiseSchedule.linear(1000)
    x_T = torch.randn(2, 1, 4, 4)
    a = ddpm_fast.sample(m, (2, 1, 4, 4), schedule=s, sampler="ddim", steps=53, x_T=x_T, seed=0)
    b = ddpm_fast.sample(m, (2, 1, 4, 4), schedule=s, sampler="ddim", steps=53, x_T=x_T, seed=99)
    assert torch.equal(a, b)  # eta = 0 is deterministic given x_T
    c = ddpm_fast.sample(m, (2, 1, 4, 4), schedule=s, sampler="ddim", steps=53, x_T=x_T, seed=99, eta=1.0)
    assert not torch.equal(a, c)


def test_nan_in_model_output_is_reported_with_its_timestep():
    def bad(x, t):
        return torch.where(t.view(-1, 1, 1, 1) == 7, torch.full_like(x, float("nan")), torch.zeros_like(x))
    with pytest.raises(FloatingPointError, match="timestep 7"):
        ddpm_fast.sample(bad, (2, 1, 4, 4), schedule=SCHED, seed=0)
    out = ddpm_fast.sample(bad, (2, 1, 4, 4), schedule=SCHED, seed=0, check_nan=False)
    assert torch.isnan(out).any()


def test_schedule_from_diffusers_carries_prediction_type():
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDPMScheduler(num_train_timesteps=20, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="conflicts"):
        ddpm_fast.sample(ElementwiseEps(), (1, 1, 2, 2), schedule=sch, seed=0, prediction_type="epsilon")
    out = ddpm_fast.sample(ElementwiseEps(), (1, 1, 2, 2), schedule=sch, seed=0)
    assert out.shape == (1, 1, 2, 2)


class FakeGaussianDiffusion(torch.nn.Module):
    """Looks like lucidrains' GaussianDiffusion: v-prediction + its own betas."""

    def __init__(self):
        super().__init__()
        self.model = LucidrainsStyleUnet()
        self.objective = "pred_v"
        self.register_buffer("betas", NoiseSchedule.sigmoid(20).betas)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(shape=(2,)), ValueError, "shape"),
    (dict(shape=(0, 1, 2, 2)), ValueError, "shape"),
    (dict(sampler="euler"), ValueError, "sampler"),
    (dict(eta=0.5), ValueError, "ddim"),
    (dict(steps=10, timesteps=[9, 5, 0]), ValueError, "timesteps"),
    (dict(timesteps=[5, 9, 0]), ValueError, "decreasing"),
    (dict(variance_type="learned_sigma"), ValueError, "variance_type"),
    (dict(thresholding=True, dynamic_thresholding_ratio=1.5), ValueError, "dynamic_thresholding_ratio"),
    (dict(prediction_type="noise"), ValueError, "prediction_type"),
    (dict(schedule=NoiseSchedule.linear(20, zero_terminal_snr=True)), ValueError, "v_prediction"),
    (dict(schedule="quadratic"), ValueError, "unknown schedule"),
    (dict(schedule=3), TypeError, "schedule"),
    (dict(x_T=torch.randn(3, 1, 2, 2)), ValueError, "x_T"),
    (dict(x_T=torch.full((2, 1, 2, 2), float("nan"))), ValueError, "NaN"),
    (dict(chunk_size=-1), ValueError, "chunk_size"),
    (dict(sample_offset=-1), ValueError, "sample_offset"),
    (dict(backend="nope"), ValueError, "backend"),
])
def test_bad_arguments(kwargs, err, match):
    args = dict(shape=(2, 1, 2, 2), schedule=SCHED, seed=0) | kwargs
    shape = args.pop("shape")
    with pytest.raises(err, match=match):
        ddpm_fast.sample(ElementwiseEps(), shape, **args)


def test_bad_models():
    with pytest.raises(ValueError, match="twice the channels"):
        ddpm_fast.sample(lambda x, t: torch.cat([x, x], 1), (1, 2, 2, 2), schedule=SCHED, seed=0)
    with pytest.raises(TypeError, match="expected a tensor"):
        ddpm_fast.sample(lambda x, t: "eps", (1, 2, 2, 2), schedule=SCHED, seed=0)
    with pytest.raises(TypeError, match="GaussianDiffusion"):
        ddpm_fast.sample(FakeGaussianDiffusion(), (1, 3, 2, 2), seed=0)


def test_zero_terminal_snr_works_with_v_prediction():
    s = NoiseSchedule.linear(20, zero_terminal_snr=True)
    out = ddpm_fast.sample(LucidrainsStyleUnet(), (1, 3, 4, 4), schedule=s, seed=0,
                           prediction_type="v_prediction")
    assert torch.isfinite(out).all()


def test_backends_report():
    b = ddpm_fast.backends()
    assert b["reference"] == "available"
    assert set(b) == {"reference", "cpp", "cuda", "triton"}
    assert all(v == "available" or v.startswith("unavailable: ") for v in b.values())


def test_intermediates_need_a_positive_interval():
    with pytest.raises(ValueError, match="intermediate_every"):
        ddpm_fast.sample(ElementwiseEps(), (1, 1, 2, 2), schedule=SCHED, seed=0,
                         return_intermediates=True, intermediate_every=0)
