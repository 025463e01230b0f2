"""Small deterministic eps-prediction models shared by the sampler tests."""
import torch


class ElementwiseEps(torch.nn.Module):
    """eps(x, t) = tanh(w x + t / 20): one parameter (so weight updates and caches can be
    tested), elementwise (sample i's output depends on sample i alone, bit for bit), cheap to
    compile."""

    def __init__(self, w=0.3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, x, t):
        return torch.tanh(x * self.w + t.view(-1, *([1] * (x.dim() - 1))).float() / 20)


class ClassConditional(torch.nn.Module):
    """eps(x, t, y) = 0.1 x + e[y]: a class label y (0..9) per sample, broadcast over space;
    ``channels``: the sample's C (the embedding's width, drawn from torch's global RNG)."""

    def __init__(self, channels):
        super().__init__()
        self.emb = torch.nn.Embedding(10, channels)

    def forward(self, x, t, y):
        return 0.1 * x + self.emb(y)[:, :, None, None]
