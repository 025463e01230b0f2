"""Small deterministic eps-prediction models shared by the sampler tests."""
import torch


class ElementwiseEps(torch.nn.Module):
    """eps(x, t) = tanh(w x + t / 20): one parameter (so weight updates and caches can be
    tested), elementwise, cheap to compile."""

    def __init__(self, w=0.3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, x, t):
        return torch.tanh(x * self.w + t.view(-1, *([1] * (x.dim() - 1))).float() / 20)
