"""The offline digits metric: real digits score well, noise scores badly, FD math is right."""
import pytest
import torch

from ddpm_fast.metrics import DigitsMetric, frechet_distance, gaussian_stats


def test_frechet_distance_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    mu, cov = gaussian_stats(a)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    # N(0, I) vs N(m, 4I) in d dims: |m|^2 + d (1 + 4 - 2*2) = |m|^2 + d
    I = torch.eye(3, dtype=torch.float64)
    m = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    assert frechet_distance(torch.zeros(3), I, m, 4 * I) == pytest.approx(5.0 + 3.0)
    # non-commuting covariances: compare with the eigen-decomposition of S1 S2 directly
    s1 = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    tr = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    want = float(torch.trace(s1) + torch.trace(s2) - 2 * tr)
    assert frechet_distance(torch.zeros(2), s1, torch.zeros(2), s2) == pytest.approx(want, rel=1e-9)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("clf") / "clf.safetensors")


@pytest.fixture(scope="module")
def metric(cache):
    return DigitsMetric(cache=cache)


def test_classifier_is_accurate_and_does_not_touch_global_rng(metric):
    assert metric.accuracy > 0.9
    before = torch.random.get_rng_state()
    from ddpm_fast.metrics.digits import train_digits_classifier
    train_digits_classifier(epochs=0)
    assert torch.equal(before, torch.random.get_rng_state())


def test_real_digits_score_well_noise_scores_badly(metric):
    real = metric.evaluate(metric.heldout_x[:64])
    noise = metric.evaluate(torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    blank = metric.evaluate(torch.full((64, 1, 16, 16), -1.0) + 0.01 * torch.randn(64, 1, 16, 16))
    assert real.confidence > 0.9 and real.classes_seen == 10
    assert real.frechet < 3 * real.real_frechet
    for bad in (noise, blank):
        assert bad.frechet > 5 * real.real_frechet
        assert bad.confidence < real.real_confidence
    assert "FD" in str(real) and set(real.as_dict()) >= {"frechet", "confidence", "real_frechet"}


def test_cached_classifier_gives_the_same_numbers(metric, cache):
    import os
    from ddpm_fast.metrics import digits as mod
    assert os.path.isfile(cache)
    mod._TRAINED.clear()                      # load from the file, not from this process's memory
    again = DigitsMetric(cache=cache)
    x = metric.heldout_x[:32]
    assert again.evaluate(x).frechet == pytest.approx(metric.evaluate(x).frechet, rel=1e-5)


def test_metric_rejects_wrong_shapes(metric):
    with pytest.raises(ValueError):
        metric.evaluate(torch.zeros(4, 3, 16, 16))
