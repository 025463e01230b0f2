"""Classifier-free guidance fused into reverse_step / ddim_step (docs/ops_contract.md): the
reference against a float64 closed form, every backend against the reference (the generic
contract test, tests/test_ops_contract.py, runs the guided cases on every backend x dtype x
layout too), the errors on every backend, and which sampler path fuses the combine."""
import pytest
import torch

import ddpm_fast
from ddpm_fast import NoiseSchedule, ddim_step, reverse_step
from ddpm_fast.ops import dispatch

from prediction_closed_form import cfg, x0_and_eps

S = NoiseSchedule.linear(1000)


def _backends():
    out = [pytest.param("reference", id="reference")]
    for b, marks in (("cpp", [pytest.mark.extension]), ("triton", [pytest.mark.triton])):
        why = dispatch.unavailable_reason(b, "cpu")
        out.append(pytest.param(b, id=b, marks=marks + [pytest.mark.skipif(why is not None, reason=str(why))]))
    return out


def _f64_schedule():
    ab = S.alphas_cumprod.double()
    beta = S.betas.double()
    return ab, beta


# --- the reference against float64 closed forms ------------------------------------------------

@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, -1.25])
def test_guided_reverse_step_equals_the_closed_form(pred, w):
    B, t = 3, torch.tensor([999, 400, 1])
    x = torch.randn(B, 2, 5, 3, dtype=torch.float64)
    out2 = torch.randn(2 * B, 2, 5, 3, dtype=torch.float64)
    z = torch.randn_like(x)
    got = reverse_step(x, out2, t, S, noise=z, prediction_type=pred, clip_denoised=False,
                       guidance_scale=w, backend="reference")
    ab, beta = _f64_schedule()
    a, a_prev, b_t = (v.reshape(-1, 1, 1, 1) for v in (ab[t], ab[t - 1], beta[t]))
    x0, _ = x0_and_eps(pred, x, cfg(out2[:B], out2[B:], w), a)
    mean = b_t * a_prev.sqrt() / (1 - a) * x0 + (1 - a_prev) * (1 - b_t).sqrt() / (1 - a) * x
    sigma = (b_t * (1 - a_prev) / (1 - a)).sqrt()
    torch.testing.assert_close(got, mean + sigma * z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("w", [0.0, 2.5])
def test_guided_ddim_step_equals_the_closed_form(pred, w):
    B = 2
    x = torch.randn(B, 4, 3, dtype=torch.float64)
    out2 = torch.randn(2 * B, 4, 3, dtype=torch.float64)
    got = ddim_step(x, out2, torch.tensor([700, 300]), torch.tensor([500, -1]), S, prediction_type=pred,
                    clip_denoised=False, guidance_scale=w, backend="reference")
    ab, _ = _f64_schedule()
    a = ab[torch.tensor([700, 300])].reshape(-1, 1, 1)
    a_prev = torch.stack([ab[500], torch.tensor(1.0, dtype=torch.float64)]).reshape(-1, 1, 1)
    x0, eps = x0_and_eps(pred, x, cfg(out2[:B], out2[B:], w), a)
    torch.testing.assert_close(got, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, rtol=1e-12, atol=1e-12)


# --- every backend against the reference on fresh inputs ----------------------------------------

@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_guided_step_on_every_backend_equals_the_reference(backend, dtype, sampler):
    """Odd sizes, a non-contiguous [2B, ...] model output in a 16-bit dtype, x_t float32."""
    B, shape = 5, (5, 3, 7, 9)
    x = torch.randn(shape)
    out2 = torch.randn(2 * B, 3, 9, 7).transpose(-1, -2).to(dtype)   # non-contiguous
    t = torch.randint(1, 1000, (B,))
    kw = dict(seed=123, sample_offset=7, guidance_scale=3.0)
    if sampler == "ddpm":
        run = lambda b, xx, mm: reverse_step(xx, mm, t, S, backend=b, **kw)   # noqa: E731
    else:
        run = lambda b, xx, mm: ddim_step(xx, mm, t, (t - 37).clamp(min=-1), S, eta=0.7, backend=b, **kw)  # noqa: E731
    ref64 = run("reference", x.double(), out2.double())
    got = run(backend, x, out2)
    assert got.dtype == x.dtype and got.shape == shape
    err = (got.double() - ref64).abs().max().item()
    assert err <= 2e-5 * max(1.0, ref64.abs().max().item()), err


# --- errors, the same on every backend -------------------------------------------------------------

@pytest.mark.parametrize("backend", _backends())
def test_bad_guidance_is_a_clear_error_on_every_backend(backend):
    x = torch.randn(2, 3, 4)
    for call, exc, match in [
        (lambda: reverse_step(x, torch.randn(4, 3, 4), 5, S, seed=1, guidance_scale=float("nan"), backend=backend),
         ValueError, "guidance_scale must be a finite number"),
        (lambda: ddim_step(x, torch.randn(4, 3, 4), 5, 2, S, guidance_scale=float("inf"), backend=backend),
         ValueError, "guidance_scale must be a finite number"),
        (lambda: reverse_step(x, torch.randn(4, 3, 4), 5, S, seed=1, guidance_scale="2", backend=backend),
         TypeError, "guidance_scale must be a real number"),
        (lambda: reverse_step(x, x, 5, S, seed=1, guidance_scale=2.0, backend=backend),
         ValueError, r"model_out must be \[2B, \.\.\.\] = \(4, 3, 4\)"),
        (lambda: ddim_step(x, torch.randn(4, 3, 5), 5, 2, S, guidance_scale=2.0, backend=backend),
         ValueError, r"model_out must be \[2B, \.\.\.\]"),
        (lambda: reverse_step(x, torch.randn(4, 3, 4), 5, S, seed=1, backend=backend),
         ValueError, "model_out has shape"),
    ]:
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.extension
@pytest.mark.skipif(dispatch.unavailable_reason("cpp", "cpu") is not None, reason="no cpp backend")
def test_direct_cpp_calls_check_the_guidance_arguments():
    ops = torch.ops.ddpm_fast
    x, table, seed = torch.randn(2, 3, 4), S.table("cpu"), torch.tensor(1)
    with pytest.raises(RuntimeError, match="guidance_scale must be a finite number"):
        ops.reverse_step(x, torch.randn(4, 3, 4), torch.tensor(5), table, None, seed, 0, 0, 0, True, 1.0, float("nan"))
    with pytest.raises(RuntimeError, match=r"model_out must be \[2B, \.\.\.\] = \[4, 3, 4\]"):
        ops.ddim_step(x, x, torch.tensor(5), torch.tensor(2), table, None, None, 0, 0.0, 0, True, 1.0, 1.0, 2.0)
    with pytest.raises(RuntimeError, match="model_out has shape"):
        ops.reverse_step(x, torch.randn(4, 3, 4), torch.tensor(5), table, None, seed, 0, 0, 0, True, 1.0, None)


# --- which sampler path fuses the combine -------------------------------------------------------------

def _spec(sampler="ddpm", r=0.0, **settings):
    from ddpm_fast.samplers.guidance import Guidance
    from ddpm_fast.samplers.settings import make_spec, resolve
    sched, s = resolve(S, dict(sampler=sampler, steps=10, **settings))
    return make_spec(sched, s, (2, 1, 3, 3), torch.device("cpu"), torch.float32, 0, "auto", True, Guidance(2.0, r))


def test_the_step_kernel_combines_unless_a_pre_step_needs_the_combined_output():
    assert _spec("ddpm").fused_guidance == 2.0
    assert _spec("ddim").fused_guidance == 2.0
    assert _spec("ddpm", r=0.5).fused_guidance is None                        # rescale: a reduction
    assert _spec("ddpm", variance_type="learned_range").fused_guidance is None
    assert _spec("ddpm", thresholding=True).fused_guidance is None
    assert _spec("ddim", use_clipped_model_output=False).fused_guidance is None
    # the multistep update combines too, unless x0 is clipped/thresholded from the combined output
    assert _spec("dpmsolver++").fused_guidance == 2.0
    assert _spec("unipc").fused_guidance == 2.0
    assert _spec("dpmsolver++", r=0.5).fused_guidance is None
    assert _spec("dpmsolver++", clip_denoised=True).fused_guidance is None
    assert _spec("unipc", thresholding=True).fused_guidance is None


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++", "unipc"])
def test_fused_sampler_equals_the_python_combine(backend, sampler, monkeypatch):
    """The sampler's fused path (the op combines) against the same run with the combine forced
    into Python (the op unguided): same samples to float rounding."""
    from ddpm_fast.samplers.loop import SamplerSpec

    def model(x, t, y):
        return 0.2 * x + y.float().reshape(-1, 1, 1, 1) * 0.1
    kw = dict(sampler=sampler, steps=12, seed=9, backend=backend, model_kwargs={"y": torch.tensor([0, 1, 2])},
              uncond_kwargs={"y": torch.tensor([5, 5, 5])}, guidance_scale=3.0)
    fused = ddpm_fast.sample(model, (3, 2, 5, 5), **kw)
    monkeypatch.setattr(SamplerSpec, "fused_guidance", property(lambda self: None))
    python = ddpm_fast.sample(model, (3, 2, 5, 5), **kw)
    torch.testing.assert_close(fused, python, rtol=0, atol=1e-5)
