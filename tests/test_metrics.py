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


def test_class_accuracy_on_known_labels(metric):
    x = metric.heldout_x[:40]
    with torch.no_grad():
        pred = metric.model(x).argmax(1)             # the classifier's own answers, read directly
    assert torch.equal(metric.predict(x), pred)
    assert metric.evaluate(x, pred).class_accuracy == 1.0
    assert metric.evaluate(x, (pred + 1) % 10).class_accuracy == 0.0
    half = torch.cat([pred[:20], (pred[20:] + 3) % 10])
    assert metric.evaluate(x, half).class_accuracy == 0.5
    plain = metric.evaluate(x)
    assert plain.class_accuracy is None and "class accuracy" not in str(plain)


def test_class_accuracy_of_real_digits_with_their_true_labels(metric):
    # scikit-learn's labels are the independent truth; the real baseline scores the same
    # held-out selection, so for those images both numbers coincide
    n = 64
    sel = torch.randperm(metric.heldout_x.shape[0], generator=torch.Generator().manual_seed(metric.seed))[:n]
    r = metric.evaluate(metric.heldout_x[sel], metric.heldout_y[sel])
    assert r.class_accuracy > 0.9 and r.class_accuracy == r.real_class_accuracy
    assert f"class accuracy {r.class_accuracy:.3f} (real {r.real_class_accuracy:.3f})" in str(r)
    assert r.as_dict()["class_accuracy"] == r.class_accuracy


@pytest.mark.parametrize("labels,why", [(torch.zeros(3, dtype=torch.int64), r"integer tensor \[4\]"),
                                        (torch.zeros(4), r"integer tensor \[4\]"),
                                        (torch.tensor([0, 1, 2, 10]), r"0\.\.9.*null class"),
                                        (torch.tensor([0, -1, 2, 3]), r"0\.\.9")])
def test_bad_labels_are_refused(metric, labels, why):
    with pytest.raises(ValueError, match=why):
        metric.evaluate(metric.heldout_x[:4], labels)
