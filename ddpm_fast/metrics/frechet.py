"""Fréchet distance between two Gaussians fitted to feature sets (the FID formula,
Heusel et al. 2017): ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}), in float64."""
from __future__ import annotations

import torch

__all__ = ["gaussian_stats", "frechet_distance"]


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], covariance [D, D]) of features [N, D], float64 (unbiased covariance)."""
    f = features.detach().to(torch.float64).cpu()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got {tuple(f.shape)}")
    mu = f.mean(0)
    fc = f - mu
    return mu, fc.T @ fc / (f.shape[0] - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> float:
    """tr((S1 S2)^{1/2}) is computed as tr((R S2 R)^{1/2}) with R = S1^{1/2}: the same
    eigenvalues, but a symmetric PSD matrix, so no complex square roots appear."""
    mu1, mu2, s1, s2 = (t.to(torch.float64) for t in (mu1, mu2, s1, s2))
    r = _sqrtm_psd(s1)
    m = r @ s2 @ r
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    d = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_sqrt
    return float(d.clamp_min(0))
