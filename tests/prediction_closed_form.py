"""float64 x0 and ε from a model output, per prediction type (Ho et al. eq. 15; Salimans & Ho's v):
the expected values of the step and sampler tests, written from the definitions, not the code."""
import torch


def x0_and_eps(pred: str, x: torch.Tensor, m: torch.Tensor, a: torch.Tensor):
    """(x0, ε) for x_t = √a x0 + √(1-a) ε, from the model output m of type ``pred``."""
    if pred == "epsilon":
        return (x - (1 - a).sqrt() * m) / a.sqrt(), m
    if pred == "sample":
        return m, (x - a.sqrt() * m) / (1 - a).sqrt()
    if pred == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * m, a.sqrt() * m + (1 - a).sqrt() * x
    raise ValueError(pred)


def cfg(m_c: torch.Tensor, m_u: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance, diffusers' convention: w = 1 conditional, w = 0 unconditional."""
    return m_u + w * (m_c - m_u)
