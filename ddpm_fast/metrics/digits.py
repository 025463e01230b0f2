"""Sample quality on the 16x16 digits, offline.

A small CNN is trained on the fly (a few seconds on a CPU, fixed seed, the user's random state
untouched) on 80% of scikit-learn's digits; the other 20% are held out. For a set of images:
- Fréchet distance (FD) between Gaussians fitted to the classifier's penultimate features of the
  images and of the classifier's training digits;
- mean max-class confidence (softmax) — recognisable digits score near the real ones;
- the spread of predicted classes (how many of the 10 digits appear);
- for class-conditional samples (``labels`` given): the class accuracy, the fraction of images
  the classifier assigns to the class they were generated for.
The same numbers for as many held-out real digits give the scale: generated numbers close to
the real ones mean "looks like digits to the classifier".
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .frechet import frechet_distance, gaussian_stats

__all__ = ["DigitsClassifier", "train_digits_classifier", "DigitsMetric", "digits_quality"]

_HOLDOUT_FRACTION = 0.2


class DigitsClassifier(nn.Module):
    """[B, 1, 16, 16] in [-1, 1] -> logits [B, 10]; ``features`` gives the 64-d penultimate layer."""

    def __init__(self, width: int = 16, feature_dim: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)       # (B, w, 8, 8)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)       # (B, 2w, 4, 4)
        return F.relu(self.fc(h.flatten(1)))              # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * _HOLDOUT_FRACTION))
    return perm[k:], perm[:k]


_TRAINED: dict = {}   # (resolution, epochs, seed) -> weights: train once per process


def train_digits_classifier(resolution: int = 16, *, epochs: int = 10, seed: int = 0,
                            cache: Optional[str] = None, verbose: bool = False):
    """Train (or load from ``cache``, a .safetensors path, or from this process's memory) the
    classifier. Returns (model in eval mode, train images, held-out images, held-out labels,
    accuracy)."""
    from ..data import digits
    data = digits(resolution)
    x, y = data.all(), data.labels
    tr, ho = _split(len(data), seed)
    key = (resolution, epochs, seed)
    meta = {"resolution": str(resolution), "epochs": str(epochs), "seed": str(seed)}
    with torch.random.fork_rng(devices=[]):
        model = DigitsClassifier()            # weights come from _fit or a cache below
    cached = _load_cache(cache, meta)
    weights = _TRAINED.get(key) or cached
    if weights is None:
        weights = _fit(model, x[tr], y[tr], epochs, seed)
    if cache and cached is None:  # also when the weights came from memory: the file was asked for
        _save_cache(cache, weights, meta)
    _TRAINED[key] = weights
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        acc = float((model(x[ho]).argmax(1) == y[ho]).float().mean())
    if verbose:
        print(f"digits classifier: held-out accuracy {acc:.3f}")
    return model, x[tr], x[ho], y[ho], acc


def _save_cache(cache: str, weights: dict, meta: dict) -> None:
    """Atomic write (temporary file, then rename): a killed run never leaves a broken cache."""
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    tmp = f"{cache}.tmp-{os.getpid()}"
    save_file(weights, tmp, metadata=meta)
    os.replace(tmp, cache)


def _load_cache(cache: Optional[str], meta: dict) -> Optional[dict]:
    if not cache or not os.path.isfile(cache):
        return None
    from safetensors import safe_open
    try:
        with safe_open(cache, framework="pt") as f:
            if f.metadata() != meta:
                return None          # trained with other settings: retrain
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception:                # a broken cache file: retrain
        return None


def _fit(model: DigitsClassifier, xt: torch.Tensor, yt: torch.Tensor, epochs: int, seed: int) -> dict:
    """Adam, batches of 64, random 1-pixel shifts; seeded, leaving the global RNG untouched."""
    threads = torch.get_num_threads()
    # one thread: this net is too small for intra-op parallelism to pay (2 shared cores:
    # 35 ms per batch on 1 thread vs 220 ms on 2 while other processes ran)
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.load_state_dict(DigitsClassifier().state_dict())     # seeded initial weights
            opt = torch.optim.Adam(model.parameters(), lr=2e-3)
            g = torch.Generator().manual_seed(seed + 1)
            for _ in range(epochs):
                order = torch.randperm(len(xt), generator=g)
                for i in range(0, len(xt), 64):
                    idx = order[i:i + 64]
                    sh = torch.randint(-1, 2, (2,), generator=g).tolist()
                    xb = torch.roll(xt[idx], shifts=sh, dims=(2, 3))
                    loss = F.cross_entropy(model(xb), yt[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@dataclass
class QualityReport:
    n: int
    frechet: float            # generated (or evaluated) images vs the classifier's training digits
    confidence: float          # mean max softmax probability
    classes_seen: int          # distinct predicted classes
    real_frechet: float        # the same numbers for n held-out real digits
    real_confidence: float
    real_classes_seen: int
    classifier_accuracy: float
    # conditional samples only: fraction classified as their requested class; the real
    # baseline is the classifier's accuracy on the same held-out digits as real_frechet's
    class_accuracy: Optional[float] = None
    real_class_accuracy: Optional[float] = None

    def __str__(self) -> str:
        text = (f"quality (digits classifier, acc {self.classifier_accuracy:.3f}) on {self.n} images: "
                f"FD {self.frechet:.2f} (real digits {self.real_frechet:.2f}), "
                f"confidence {self.confidence:.3f} (real {self.real_confidence:.3f}), "
                f"classes {self.classes_seen}/10 (real {self.real_classes_seen}/10)")
        if self.class_accuracy is not None:
            text += (f", class accuracy {self.class_accuracy:.3f} "
                     f"(real {self.real_class_accuracy:.3f})")
        return text

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class DigitsMetric:
    """Build once (trains the classifier), then call ``evaluate(images)`` as often as needed."""

    def __init__(self, resolution: int = 16, *, seed: int = 0, cache: Optional[str] = None):
        if resolution != 16:
            raise ValueError("the digits metric is defined at 16x16")
        (self.model, train_x, self.heldout_x, self.heldout_y,
         self.accuracy) = train_digits_classifier(resolution, seed=seed, cache=cache)
        self.seed = seed
        with torch.no_grad():
            self.ref_mu, self.ref_cov = gaussian_stats(self.model.features(train_x))

    @torch.no_grad()
    def _numbers(self, x: torch.Tensor) -> tuple[float, float, int, torch.Tensor]:
        x = x.detach().float().cpu().clamp(-1, 1)
        feats = self.model.features(x)
        probs = F.softmax(self.model.head(feats), dim=1)
        mu, cov = gaussian_stats(feats)
        fd = frechet_distance(mu, cov, self.ref_mu, self.ref_cov)
        pred = probs.argmax(1)
        return fd, float(probs.max(1).values.mean()), int(pred.unique().numel()), pred

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's class (int64 [N]) of images float [N, 1, 16, 16] in [-1, 1]."""
        _check_images(images)
        return self.model(images.detach().float().cpu().clamp(-1, 1)).argmax(1)

    def evaluate(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> QualityReport:
        """images: float [N, 1, 16, 16] in [-1, 1], N >= 2. Real baseline: N held-out digits
        (all 359 when N is larger) — FD depends on N, so compare at the same N.
        labels: for class-conditional samples, the class (int64 [N] in 0..9) each was generated
        for; the report then holds the class accuracy (None without labels)."""
        _check_images(images)
        n = images.shape[0]
        labels = _check_labels(labels, n)
        fd, conf, seen, pred = self._numbers(images)
        k = min(n, self.heldout_x.shape[0])
        sel = torch.randperm(self.heldout_x.shape[0], generator=torch.Generator().manual_seed(self.seed))[:k]
        rfd, rconf, rseen, rpred = self._numbers(self.heldout_x[sel])
        acc = real_acc = None
        if labels is not None:
            acc = float((pred == labels).double().mean())
            real_acc = float((rpred == self.heldout_y[sel]).double().mean())
        return QualityReport(n, fd, conf, seen, rfd, rconf, rseen, self.accuracy, acc, real_acc)


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (1, 16, 16):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images [N, 1, 16, 16], got {got}")


def _check_labels(labels, n: int) -> Optional[torch.Tensor]:
    """labels as int64 [n] on the CPU, each in 0..9 (the digits' classes), or None."""
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor [{n}] (the class of each image), got {got}")
    labels = labels.detach().cpu().long()
    if n and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise ValueError(f"labels must be digit classes in 0..9, got values in "
                         f"[{int(labels.min())}, {int(labels.max())}] (the null class is not a class)")
    return labels


def digits_quality(images: torch.Tensor, *, seed: int = 0, cache: Optional[str] = None) -> QualityReport:
    """One-shot: train the classifier and evaluate ``images`` (float [N, 1, 16, 16] in [-1, 1])."""
    return DigitsMetric(seed=seed, cache=cache).evaluate(images)
