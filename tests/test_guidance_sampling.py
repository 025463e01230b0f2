"""Classifier-free guidance in ``ddpm_fast.sample``: against a float64 closed form, against
diffusers' own CFG loop (the combine and ``rescale_noise_cfg`` exactly as its pipelines do it),
and every argument error. The ops-level combine on every backend: tests/test_guidance_ops.py."""
import math

import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule
from ddpm_fast.noise import STREAM_STEP, philox_normal

from prediction_closed_form import cfg, x0_and_eps

SHAPE = (3, 2, 5, 5)
K = 4                     # classes 0..3, class 4 = the null class


class ToyConditional(torch.nn.Module):
    """m(x, t, y) = a x + e[y] + c t: linear, so a float64 closed form of the loop is easy."""

    def __init__(self, a: float = 0.3):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.e = torch.nn.Parameter(torch.randn(K + 1, *SHAPE[1:], generator=g) * 0.5)
        self.a, self.c = a, 1e-4

    def forward(self, x, t, y):
        return self.a * x + self.e[y].to(x.dtype) + self.c * t.to(x.dtype).reshape(-1, 1, 1, 1)


def labels(B=SHAPE[0]):
    return torch.arange(B) % K, torch.full((B,), K)


def guided(model, **kw):
    y, null = labels(kw.pop("B", SHAPE[0]))
    kw.setdefault("shape", SHAPE)
    shape = kw.pop("shape")
    return ddpm_fast.sample(model, shape, model_kwargs={"y": y}, uncond_kwargs={"y": null}, **kw)


# --- float64 closed form ------------------------------------------------------------------------

def _closed_form_ddim(model, x_T, ts, w, r, pred, schedule):
    """Deterministic DDIM (eta = 0, no clipping) with the CFG combine, all in float64."""
    ab = schedule.alphas_cumprod.double()
    y, null = labels()
    e = model.e.detach().double()
    x = x_T.double()
    for i, t in enumerate(ts):
        t_col = torch.full((x.shape[0], 1, 1, 1), float(t), dtype=torch.float64)
        m_c = model.a * x + e[y] + model.c * t_col
        m_u = model.a * x + e[null] + model.c * t_col
        m = cfg(m_c, m_u, w)
        if r:
            std_c = m_c.flatten(1).std(1).reshape(-1, 1, 1, 1)
            std_m = m.flatten(1).std(1).reshape(-1, 1, 1, 1)
            m = r * m * std_c / std_m + (1 - r) * m
        a = ab[t]
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x0, eps = x0_and_eps(pred, x, m, a)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("w,r", [(3.0, 0.0), (0.0, 0.0), (1.0, 0.0), (-0.5, 0.0), (4.0, 0.7)])
def test_ddim_cfg_equals_float64_closed_form(pred, w, r):
    model = ToyConditional()
    schedule = NoiseSchedule.linear(1000)
    ts = [999, 700, 400, 150, 20, 0]
    x_T = torch.randn(SHAPE)
    ours = guided(model, schedule=schedule, sampler="ddim", timesteps=ts, eta=0.0, x_T=x_T,
                  prediction_type=pred, clip_denoised=False, guidance_scale=w, guidance_rescale=r)
    truth = _closed_form_ddim(model, x_T, ts, w, r, pred, schedule)
    err = (ours.double() - truth).abs().max().item()
    assert err <= 2e-5 * max(1.0, truth.abs().max().item()), err


# --- diffusers' CFG loop ------------------------------------------------------------------------

diffusers = pytest.importorskip("diffusers")


def _class_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8, num_class_embeds=K + 1,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def _diffusers_cfg_loop(unet, sch, x, y, null, w, r, step_kwargs):
    """The loop diffusers' pipelines run: uncond rows first, chunk(2), the guidance formula,
    ``rescale_noise_cfg`` when guidance_rescale > 0, then the scheduler's step."""
    from diffusers.guiders.guider_utils import rescale_noise_cfg
    with torch.no_grad():
        for t in sch.timesteps:
            out = unet(torch.cat([x] * 2), t, class_labels=torch.cat([null, y])).sample
            noise_pred_uncond, noise_pred_cond = out.chunk(2)
            noise_pred = noise_pred_uncond + w * (noise_pred_cond - noise_pred_uncond)
            if r > 0:
                noise_pred = rescale_noise_cfg(noise_pred, noise_pred_cond, guidance_rescale=r)
            x = sch.step(noise_pred, t, x, **step_kwargs(int(t))).prev_sample
    return x


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("r", [0.0, 0.7])
def test_ddim_cfg_equals_diffusers_loop(pred, clip, r):
    """10 deterministic DDIM steps (eta = 0) from the same x_T: within 1e-4. T = 100: with
    T = 1000 diffusers' float32 cumprod of the alphas alone moves its loop ~3e-4 away from the
    same loop with float64 coefficients (ours), guidance amplifying it."""
    unet = _class_unet()
    sch = diffusers.DDIMScheduler(num_train_timesteps=100, prediction_type=pred, clip_sample=clip)
    sch.set_timesteps(10)
    shape = (3, 3, 8, 8)
    y, null = torch.tensor([0, 1, 3]), torch.full((3,), K)
    x_T = torch.randn(shape)
    ref = _diffusers_cfg_loop(unet, sch, x_T, y, null, 3.0, r, lambda t: {"eta": 0.0})
    ours = ddpm_fast.sample(unet, shape, schedule=sch, x_T=x_T, seed=0,
                            model_kwargs={"class_labels": y}, uncond_kwargs={"class_labels": null},
                            guidance_scale=3.0, guidance_rescale=r)
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4, f"max abs difference {err:.3g} after 10 steps"


@pytest.mark.parametrize("r", [0.0, 0.5])
def test_ddpm_cfg_equals_diffusers_loop_with_the_same_noise(r, monkeypatch):
    """diffusers' DDPMScheduler loop fed our Philox noise (its randn_tensor replaced), 25 steps."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod
    unet = _class_unet()
    sch = diffusers.DDPMScheduler(num_train_timesteps=25)
    sch.set_timesteps(25)
    seed, shape = 11, (3, 3, 8, 8)
    y, null = torch.tensor([2, 0, 1]), torch.full((3,), K)
    current = {}
    monkeypatch.setattr(ddpm_mod, "randn_tensor", lambda s, **kw: philox_normal(
        seed, tuple(s), current["t"], 0, STREAM_STEP))

    def remember(t):
        current["t"] = t
        return {}
    x_T = ddpm_fast.ops.randn(shape, seed, stream=0)
    ref = _diffusers_cfg_loop(unet, sch, x_T, y, null, 2.5, r, remember)
    ours = ddpm_fast.sample(unet, shape, schedule=sch, seed=seed,
                            model_kwargs={"class_labels": y}, uncond_kwargs={"class_labels": null},
                            guidance_scale=2.5, guidance_rescale=r)
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4, f"max abs difference {err:.3g} after 25 steps"


# --- the convention: w = 1 is the conditional model, w = 0 the unconditional -------------------

@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scale_one_is_conditional_and_zero_unconditional(sampler):
    model = ToyConditional()
    y, null = labels()
    kw = dict(sampler=sampler, steps=20, seed=5)
    cond = ddpm_fast.sample(model, SHAPE, model_kwargs={"y": y}, **kw)
    uncond = ddpm_fast.sample(model, SHAPE, model_kwargs={"y": null}, **kw)
    torch.testing.assert_close(guided(model, guidance_scale=1.0, **kw), cond, rtol=0, atol=1e-5)
    torch.testing.assert_close(guided(model, guidance_scale=0.0, **kw), uncond, rtol=0, atol=1e-5)
    assert (guided(model, guidance_scale=3.0, **kw) - cond).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("r", [0.0, 0.6])
def test_chunks_and_compile_give_the_same_samples(sampler, r):
    model = ToyConditional()
    kw = dict(sampler=sampler, steps=8, seed=3, guidance_scale=2.0, guidance_rescale=r, B=5,
              shape=(5, *SHAPE[1:]))
    whole = guided(model, **kw)
    torch.testing.assert_close(guided(model, chunk_size=2, **kw), whole, rtol=0, atol=0)
    compiled = guided(model, compile=True, **kw)
    torch.testing.assert_close(compiled, whole, rtol=0, atol=1e-5)


def test_the_model_sees_one_batch_of_2B_cond_rows_first():
    seen = []

    def model(x, t, y, scale):
        seen.append((x.clone(), t.clone(), y.clone(), scale))
        return 0.1 * x + y.float().reshape(-1, 1, 1, 1)
    y, null = torch.tensor([0, 1, 2]), torch.full((3,), 9)
    ddpm_fast.sample(model, SHAPE, timesteps=[10, 3], sampler="ddim", seed=0, model_kwargs={"y": y, "scale": 2},
                     uncond_kwargs={"y": null, "scale": 2}, guidance_scale=2.0)
    assert len(seen) == 2
    for x, t, yy, scale in seen:
        assert x.shape[0] == 6 and torch.equal(x[:3], x[3:]) and torch.equal(t[:3], t[3:])
        assert torch.equal(yy, torch.cat([y, null])) and scale == 2


def test_shared_kwarg_is_passed_whole():
    table = torch.randn(3, 2)

    def model(x, t, y, table):
        assert table.shape == (3, 2)
        return 0.1 * x + table[y % 3].sum(1).reshape(-1, 1, 1, 1)
    y, null = torch.tensor([0, 1, 2]), torch.tensor([2, 2, 2])
    s = ddpm_fast.Shared(table)
    out = ddpm_fast.sample(model, SHAPE, steps=3, sampler="ddim", seed=0, chunk_size=2,
                           model_kwargs={"y": y, "table": s}, uncond_kwargs={"y": null, "table": s},
                           guidance_scale=2.0)
    assert torch.isfinite(out).all()


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,exc,match", [
    (dict(guidance_scale=2.0, uncond_kwargs=None), ValueError, "needs uncond_kwargs"),
    (dict(guidance_scale=None), ValueError, "uncond_kwargs is only used"),
    (dict(guidance_scale=None, uncond_kwargs=None, guidance_rescale=0.5), ValueError, "needs guidance_scale"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale must be a finite"),
    (dict(guidance_scale=math.inf), ValueError, "guidance_scale must be a finite"),
    (dict(guidance_scale="3"), TypeError, "guidance_scale must be a real number"),
    (dict(guidance_scale=True), TypeError, "guidance_scale must be a real number"),
    (dict(guidance_scale=2.0, guidance_rescale=1.5), ValueError, r"guidance_rescale must be a number in \[0, 1\]"),
    (dict(guidance_scale=2.0, guidance_rescale=float("nan")), ValueError, "guidance_rescale must be"),
    (dict(guidance_scale=2.0, uncond_kwargs=[1]), TypeError, "model_kwargs must be a dict"),
    (dict(guidance_scale=2.0, uncond_kwargs={"z": torch.zeros(3, dtype=torch.long)}), ValueError, "same keys"),
    (dict(guidance_scale=2.0, uncond_kwargs={"y": torch.zeros(2, dtype=torch.long)}), ValueError,
     r"uncond_kwargs\['y'\] must be a per-sample tensor with 3 rows"),
    (dict(guidance_scale=2.0, uncond_kwargs={"y": torch.zeros(3, dtype=torch.int32)}), ValueError, "must match"),
    (dict(guidance_scale=2.0, uncond_kwargs={"y": 4}), ValueError, r"uncond_kwargs\['y'\] must be a per-sample"),
])
def test_bad_guidance_arguments_are_clear_errors(kw, exc, match):
    calls = []

    def model(x, t, y):
        calls.append(1)
        return x
    base = dict(model_kwargs={"y": torch.zeros(3, dtype=torch.long)},
                uncond_kwargs={"y": torch.full((3,), 4)})
    base.update(kw)
    with pytest.raises(exc, match=match):
        ddpm_fast.sample(model, SHAPE, steps=2, sampler="ddim", **base)
    assert not calls   # checked before any model call


def test_batch_mismatch_in_model_kwargs_is_an_error():
    with pytest.raises(ValueError, match=r"model_kwargs\['y'\] must be a per-sample tensor with 3 rows"):
        ddpm_fast.sample(ToyConditional(), SHAPE, steps=2, model_kwargs={"y": torch.zeros(4, dtype=torch.long)},
                         uncond_kwargs={"y": torch.zeros(3, dtype=torch.long)}, guidance_scale=2.0)


def test_unequal_non_tensor_kwargs_are_an_error():
    with pytest.raises(ValueError, match="must be equal in model_kwargs and uncond_kwargs"):
        ddpm_fast.sample(lambda x, t, y, k: x, SHAPE, steps=2,
                         model_kwargs={"y": torch.zeros(3, dtype=torch.long), "k": 1},
                         uncond_kwargs={"y": torch.zeros(3, dtype=torch.long), "k": 2}, guidance_scale=2.0)


def test_empty_kwargs_are_an_error():
    with pytest.raises(ValueError, match="needs a conditional model"):
        ddpm_fast.sample(lambda x, t: x, SHAPE, steps=2, model_kwargs={}, uncond_kwargs={}, guidance_scale=2.0)


@pytest.mark.parametrize("compile", [False, True])
def test_a_model_that_ignores_its_kwargs_is_an_error(compile):
    def model(x, t, **kwargs):
        return 0.1 * x
    with pytest.raises(ValueError, match="returned the same output for model_kwargs and uncond_kwargs"):
        guided(model, steps=3, sampler="ddim", seed=0, guidance_scale=3.0, compile=compile)


def test_a_model_without_the_kwargs_is_an_error():
    with pytest.raises(TypeError, match=r"keyword arguments \['y'\].*which it does not take"):
        guided(lambda x, t: x, steps=3, seed=0, guidance_scale=3.0)


def test_a_model_that_returns_B_rows_is_an_error():
    def model(x, t, y):
        return x[: x.shape[0] // 2]
    with pytest.raises(ValueError, match=r"returned shape \(3, 2, 5, 5\) for input \(6, 2, 5, 5\)"):
        guided(model, steps=3, seed=0, guidance_scale=3.0)


# --- the CUDA-graph runner with the 2B batch: its bookkeeping on CPU, then on a GPU -------------

def _graph_spec(shape, backend, sampler, w, r):
    from ddpm_fast.samplers.guidance_kwargs import check_guidance
    from ddpm_fast.samplers.settings import make_spec, resolve
    y, null = labels(shape[0])
    sched, settings = resolve(NoiseSchedule.linear(1000), dict(sampler=sampler, steps=10))
    g = check_guidance(w, r, {"y": y}, {"y": null}, shape[0])
    return make_spec(sched, settings, shape, torch.device("cpu"), torch.float32, 0, backend, True, g)


@pytest.mark.parametrize("mode", ["step", "loop"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("r", [0.0, 0.5])
def test_graph_runner_replays_the_2B_batch_like_the_eager_sampler(mode, sampler, r):
    from ddpm_fast.samplers.graph import GraphSampler
    from ddpm_fast.samplers.guidance_kwargs import chunk_kwargs

    class EagerReplay(GraphSampler):   # the capture records the Python function itself
        needs_cuda = False

        def _record(self, fn):
            return fn
    model = ToyConditional()
    spec = _graph_spec(SHAPE, "auto", sampler, 2.5, r)
    y, null = labels()
    kw = chunk_kwargs({"y": y}, {"y": null}, spec.guidance, 0, SHAPE[0], SHAPE[0])
    runner = EagerReplay(spec, model, kw, None, mode)
    for seed, first in ((3, 0), (4, 2)):   # new seed and labels: copied into the static kwargs
        y = (torch.arange(SHAPE[0]) + first) % K
        kw = chunk_kwargs({"y": y}, {"y": null}, spec.guidance, 0, SHAPE[0], SHAPE[0])
        x, _, bad = runner.run(seed, None, kw, False, 0)
        want = ddpm_fast.sample(model, SHAPE, sampler=sampler, steps=10, seed=seed, model_kwargs={"y": y},
                                uncond_kwargs={"y": null}, guidance_scale=2.5, guidance_rescale=r)
        torch.testing.assert_close(x, want, rtol=0, atol=1e-6)
        assert int(bad) == -1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", [True, "loop"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_cuda_graph_guided_equals_eager_on_gpu(mode, sampler):
    model = ToyConditional().cuda()
    y, null = labels()
    kw = dict(sampler=sampler, steps=20, seed=7, device="cuda", model_kwargs={"y": y.cuda()},
              uncond_kwargs={"y": null.cuda()}, guidance_scale=3.0)
    eager = ddpm_fast.sample(model, SHAPE, cuda_graph=False, **kw)
    graph = ddpm_fast.sample(model, SHAPE, cuda_graph=mode, **kw)
    torch.testing.assert_close(graph, eager, rtol=0, atol=1e-5)
