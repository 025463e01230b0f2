"""Schedules: every coefficient against its formula, the pitfalls of t = 0 and respacing."""
import math

import pytest
import torch

from ddpm_fast.schedule import TABLE_WIDTH, Col, NoiseSchedule, spaced_timesteps

KINDS = ["linear", "scaled_linear", "cosine", "sigmoid", "diffusers_sigmoid"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [2, 17, 1000])
def test_table_matches_formulas(kind, T):
    s = NoiseSchedule.make(kind, T)
    tab = s.table()
    assert tab.shape == (T, TABLE_WIDTH) and tab.dtype == torch.float64
    b = s.betas
    ab = torch.cumprod(1 - b, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    assert torch.isfinite(tab).all()
    torch.testing.assert_close(tab[:, Col.ALPHA_BAR], ab, rtol=1e-14, atol=0)
    torch.testing.assert_close(tab[:, Col.ALPHA_BAR_PREV], ab_prev, rtol=1e-14, atol=0)
    torch.testing.assert_close(tab[:, Col.SQRT_RECIP_ALPHA_BAR] * tab[:, Col.SQRT_ALPHA_BAR],
                               torch.ones(T, dtype=torch.float64))
    var = b * (1 - ab_prev) / (1 - ab)
    torch.testing.assert_close(tab[:, Col.POSTERIOR_VARIANCE], var)
    # the posterior mean coefficients reproduce mu = E[x_{t-1} | x_t, x0] (Ho et al. eq. 7)
    c1, c2 = tab[:, Col.POSTERIOR_MEAN_COEF1], tab[:, Col.POSTERIOR_MEAN_COEF2]
    torch.testing.assert_close(c1, ab_prev.sqrt() * b / (1 - ab))
    torch.testing.assert_close(c2, (1 - b).sqrt() * (1 - ab_prev) / (1 - ab))
    assert (b > 0).all() and (b <= 0.999 + 1e-12).all()
    assert (ab[1:] < ab[:-1]).all()


def test_t0_has_zero_variance_and_finite_clipped_log():
    s = NoiseSchedule.linear(1000)
    tab = s.table()
    assert tab[0, Col.POSTERIOR_VARIANCE] == 0 and tab[0, Col.SIGMA_SMALL] == 0
    assert math.isfinite(tab[0, Col.POSTERIOR_LOG_VARIANCE_CLIPPED])
    assert tab[0, Col.POSTERIOR_LOG_VARIANCE_CLIPPED] == tab[1, Col.POSTERIOR_LOG_VARIANCE_CLIPPED]
    assert tab[0, Col.ALPHA_BAR_PREV] == 1.0


def test_linear_matches_ho_et_al():
    b = NoiseSchedule.linear(1000).betas
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)


def test_cosine_matches_nichol_dhariwal_formula():
    T, s_ = 1000, 0.008
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    ab = NoiseSchedule.cosine(T).alphas_cumprod
    for t in (0, 10, 500, 900):
        assert ab[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_zero_terminal_snr():
    s = NoiseSchedule.linear(1000, zero_terminal_snr=True)
    assert s.zero_terminal_snr
    assert s.alphas_cumprod[-1].item() == 0.0
    assert s.alphas_cumprod[0].item() == pytest.approx(NoiseSchedule.linear(1000).alphas_cumprod[0].item())
    assert not NoiseSchedule.linear(1000).zero_terminal_snr


def test_device_table_cached():
    s = NoiseSchedule.linear(10)
    assert s.table("cpu") is s.table("cpu")


@pytest.mark.parametrize("bad", [[0.1], [0.0, 0.1], [float("nan"), 0.1], [0.5, 1.5]])
def test_bad_betas_rejected(bad):
    with pytest.raises(ValueError):
        NoiseSchedule(bad)


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule.make("quadratic", 10)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 53, 999, 1000])
def test_spacing_gives_exact_count_strictly_decreasing(spacing, steps):
    ts = spaced_timesteps(1000, steps, spacing)
    assert len(ts) == steps  # diffusers PR #1835 gave 56 for 53
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert 0 <= ts[-1] and ts[0] <= 999
    if spacing == "leading":
        assert ts[-1] == 0


def test_spacing_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for spacing in ["leading", "trailing", "linspace"]:
        for steps in [10, 50, 53, 250]:
            sch = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
            sch.set_timesteps(steps)
            assert spaced_timesteps(1000, steps, spacing) == sch.timesteps.tolist(), (spacing, steps)


def test_spacing_rejects_bad_steps():
    with pytest.raises(ValueError):
        spaced_timesteps(100, 0)
    with pytest.raises(ValueError):
        spaced_timesteps(100, 101)
    with pytest.raises(ValueError):
        spaced_timesteps(100, 10, "random")


@pytest.mark.parametrize("bad", [42, "squaredcos_cap_v2", None, [0.1, 0.2], 1.5])
def test_from_diffusers_refuses_what_is_not_a_scheduler_or_config(bad):
    """These used to return linear, T=1000 without a word."""
    with pytest.raises(TypeError, match="diffusers scheduler or its config"):
        NoiseSchedule.from_diffusers(bad)


def test_from_diffusers_reads_any_mapping():
    from types import MappingProxyType
    cfg = {"num_train_timesteps": 50, "beta_schedule": "squaredcos_cap_v2"}
    a = NoiseSchedule.from_diffusers(MappingProxyType(cfg))
    assert a.T == 50 and a.name == "cosine"
    torch.testing.assert_close(a.betas, NoiseSchedule.from_diffusers(cfg).betas, rtol=0, atol=0)
