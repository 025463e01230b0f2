"""The reference ops against the paper's formulas in float64, and the ops' input checks."""
import pytest
import torch
import torch.nn.functional as F

from ddpm_fast import NoiseSchedule, ddim_step, groupnorm_temb_silu, q_sample, reverse_step, temb_add
from ddpm_fast.ops import sinusoidal_embedding
from ddpm_fast.schedule import Col

S = NoiseSchedule.linear(1000)
AB = S.alphas_cumprod  # float64


def fp64_posterior(x, x0, t):
    """mu~_t(x_t, x0) of Ho et al. eq. 7, straight from alpha_bar in float64."""
    ab, abp = AB[t], (AB[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
    beta = 1 - ab / abp
    return (abp.sqrt() * beta / (1 - ab)) * x0 + ((1 - beta).sqrt() * (1 - abp) / (1 - ab)) * x


@pytest.mark.parametrize("t", [0, 1, 500, 999])
@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_reverse_step_mean_is_the_posterior_mean(t, pred):
    x0 = torch.rand(3, 2, 5, 5, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    ab = AB[t]
    x = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    m = {"epsilon": eps, "sample": x0, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[pred]
    out = reverse_step(x.float(), m.float(), t, S, noise=torch.zeros_like(x).float(),
                       prediction_type=pred, clip_denoised=False, backend="reference")
    expected = fp64_posterior(x, x0, t)
    torch.testing.assert_close(out.double(), expected, rtol=2e-4 if t == 999 else 1e-5, atol=1e-5)


def test_no_noise_at_t0_both_variances():
    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for var in ("fixed_small", "fixed_large"):
        a = reverse_step(x, m, 0, S, seed=1, variance_type=var, backend="reference")
        b = reverse_step(x, m, 0, S, noise=torch.randn_like(x) * 100, variance_type=var, backend="reference")
        assert torch.equal(a, b)


def test_variance_types_scale_the_noise():
    x, m, z = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = 10
    base = reverse_step(x, m, t, S, noise=torch.zeros_like(z), backend="reference")
    for var, col in (("fixed_small", Col.SIGMA_SMALL), ("fixed_large", Col.SIGMA_LARGE)):
        out = reverse_step(x, m, t, S, noise=z, variance_type=var, backend="reference")
        torch.testing.assert_close(out - base, S.column(col)[t].float() * z, rtol=1e-4, atol=1e-6)


def test_clipping_changes_the_mean():
    x = torch.full((1, 1, 2, 2), 3.0)
    m = torch.full((1, 1, 2, 2), -3.0)  # predicts x0 far outside [-1, 1]
    z = torch.zeros_like(x)
    a = reverse_step(x, m, 999, S, noise=z, clip_denoised=True, backend="reference")
    b = reverse_step(x, m, 999, S, noise=z, clip_denoised=False, backend="reference")
    assert not torch.allclose(a, b)
    x0c = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(a.double(), fp64_posterior(x.double(), x0c, 999), rtol=1e-5, atol=1e-6)


def test_ddim_recomputes_eps_after_clipping():
    """lucidrains PR #84 / diffusers #2159: eps must come from the clipped x0."""
    t, tp = 900, 880
    x = torch.full((1, 1, 2, 2), 2.0, dtype=torch.float64)
    m = torch.full((1, 1, 2, 2), -2.0, dtype=torch.float64)
    out = ddim_step(x, m, t, tp, S, clip_denoised=True, backend="reference")
    a, ap = AB[t], AB[tp]
    x0 = ((x - (1 - a).sqrt() * m) / a.sqrt()).clamp(-1, 1)
    eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    torch.testing.assert_close(out, ap.sqrt() * x0 + (1 - ap).sqrt() * eps)


@pytest.mark.parametrize("pred", ["sample", "v_prediction"])
def test_ddim_non_eps_predictions_keep_the_eps_term(pred):
    """diffusers #1486: DDIM with x0/v prediction must still include the direction term."""
    t, tp = 500, 400
    x0 = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    a, ap = AB[t], AB[tp]
    x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    m = x0 if pred == "sample" else a.sqrt() * eps - (1 - a).sqrt() * x0
    out = ddim_step(x, m, t, tp, S, prediction_type=pred, clip_denoised=False, backend="reference")
    torch.testing.assert_close(out, ap.sqrt() * x0 + (1 - ap).sqrt() * eps)


def test_ddim_final_alpha():
    x, m = torch.randn(1, 1, 3, 3, dtype=torch.float64), torch.randn(1, 1, 3, 3, dtype=torch.float64)
    a = ddim_step(x, m, 20, -1, S, final_alpha_bar=1.0, clip_denoised=False, backend="reference")
    x0 = (x - (1 - AB[20]).sqrt() * m) / AB[20].sqrt()
    torch.testing.assert_close(a, x0)  # alpha_prev = 1: the step returns x0 itself
    b = ddim_step(x, m, 20, -1, S, final_alpha_bar=AB[0].item(), clip_denoised=False, backend="reference")
    torch.testing.assert_close(b, AB[0].sqrt() * x0 + (1 - AB[0]).sqrt() * m)


def test_q_sample_targets():
    x0 = torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 10, 500, 999])
    x_t, eps = q_sample(x0, t, S, seed=5, return_target="epsilon", backend="reference")
    torch.testing.assert_close(x_t, q_sample(x0, t, S, eps, backend="reference"))
    _, v = q_sample(x0, t, S, seed=5, return_target="v_prediction", backend="reference")
    a = AB[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0, rtol=1e-5, atol=1e-6)
    _, x0t = q_sample(x0, t, S, seed=5, return_target="sample", backend="reference")
    assert torch.equal(x0t, x0)


def test_temb_add_and_groupnorm_fusion():
    h, temb = torch.randn(2, 8, 5, 3), torch.randn(2, 8)
    torch.testing.assert_close(temb_add(h, temb), h + temb[:, :, None, None])
    w, b = torch.randn(8), torch.randn(8)
    for mode in ("before_norm", "after_norm"):
        y = groupnorm_temb_silu(h, w, b, 4, temb, temb_mode=mode, backend="reference")
        if mode == "before_norm":
            ref = F.silu(F.group_norm(h + temb[:, :, None, None], 4, w, b))
        else:
            ref = F.silu(F.group_norm(h, 4, w, b) + temb[:, :, None, None])
        torch.testing.assert_close(y, ref)
    y = groupnorm_temb_silu(h, w, b, 4, apply_silu=False, backend="reference")
    torch.testing.assert_close(y, F.group_norm(h, 4, w, b))


def test_half_inputs_computed_in_float32():
    h = torch.randn(2, 8, 4, 4).bfloat16()
    w, b = torch.ones(8), torch.zeros(8)
    y = groupnorm_temb_silu(h, w, b, 2, backend="reference")
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.silu(F.group_norm(h.float(), 2, w, b)), rtol=1e-2, atol=1e-2)


def test_sinusoidal_embedding():
    t = torch.tensor([0, 1, 999])
    e = sinusoidal_embedding(t, 8)
    assert e.shape == (3, 8)
    assert torch.equal(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 3)
    torch.testing.assert_close(e[2, :4], torch.sin(999 * freqs))


# --- bad input: clear, typed errors ---------------------------------------------------------

X = torch.randn(2, 3, 4, 4)


@pytest.mark.parametrize("call,err,match", [
    (lambda: reverse_step(X, X, 1000, S, seed=0), ValueError, "out of range"),
    (lambda: reverse_step(X, X, -1, S, seed=0), ValueError, "out of range"),
    (lambda: reverse_step(X, X, torch.tensor([3, 1000]), S, seed=0), ValueError, "out of range"),
    (lambda: reverse_step(X, X, torch.tensor([3.0, 1.0]), S, seed=0), TypeError, "int32 or int64"),
    (lambda: reverse_step(X, X, torch.tensor([1, 2, 3]), S, seed=0), ValueError, "shape"),
    (lambda: reverse_step(X.long(), X, 5, S, seed=0), TypeError, "float32"),
    (lambda: reverse_step(X, X[:, :2], 5, S, seed=0), ValueError, "shape"),
    (lambda: reverse_step(X, X, 5, S), ValueError, "noise= or seed="),
    (lambda: reverse_step(X, X, 5, S, seed=0, noise=X), ValueError, "either"),
    (lambda: reverse_step(X, X, 5, S, seed=0, prediction_type="mu"), ValueError, "prediction_type"),
    (lambda: reverse_step(X, X, 5, S, seed=0, variance_type="learned"), ValueError, "variance_type"),
    (lambda: reverse_step(X, X.to("meta"), 5, S, seed=0), ValueError, "one device"),
    (lambda: reverse_step(X, X, 5, S.table().float(), seed=0), ValueError, "float64"),
    (lambda: reverse_step(X, X, 5, S, seed=2 ** 64), ValueError, "64 bits"),
    (lambda: reverse_step(X, X, 5, S, seed=0, backend="cuda_magic"), ValueError, "unknown backend"),
    (lambda: q_sample(X, 5, S), ValueError, "noise= or seed="),
    (lambda: q_sample(X, 5, S, seed=1, return_target="mean"), ValueError, "target"),
    (lambda: ddim_step(X, X, 5, 1000, S), ValueError, "t_prev"),
    (lambda: ddim_step(X, X, 5, 3, S, eta=-1.0), ValueError, "eta"),
    (lambda: temb_add(X, torch.randn(3, 3)), ValueError, "temb"),
    (lambda: groupnorm_temb_silu(X, torch.ones(3), torch.zeros(3), 2), ValueError, "divisor"),
    (lambda: groupnorm_temb_silu(X, torch.ones(4), torch.zeros(3), 3), ValueError, "weight"),
])
def test_bad_input_raises_clearly(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_front_traces_without_graph_breaks():
    """The validating front and the dispatcher lookup compile with fullgraph=True."""
    table = S.table()

    def step(x, m, t, seed):
        return reverse_step(x, m, t, table, seed=seed)

    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t, seed = torch.tensor(7), torch.tensor(3)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, m, t, seed), step(x, m, t, seed))


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_reverse_step_out_writes_in_place(backend):
    x, m = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    want = reverse_step(x, m, 9, S, seed=4, backend=backend)
    out = torch.empty_like(x)
    assert reverse_step(x, m, 9, S, seed=4, out=out, backend=backend) is out
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    x_copy = x.clone()
    reverse_step(x_copy, m, 9, S, seed=4, out=x_copy, backend=backend)  # aliasing x_t
    torch.testing.assert_close(x_copy, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out must be"):
        reverse_step(x, m, 9, S, seed=4, out=torch.empty(2, 3, 4), backend=backend)
