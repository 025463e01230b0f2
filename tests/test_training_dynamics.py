"""Training does what it says, against independent truths: the loss falls on the digits over a
few hundred steps, and the EMA weights equal their closed form (a float64 sum over the recorded
weights with the documented decay min(d, (1 + n) / (10 + n)))."""
import math

import pytest
import torch

from ddpm_fast.data import ImageData, digits
from ddpm_fast.training import train


@pytest.mark.slow
def test_loss_falls_on_the_digits(tmp_path):
    """epsilon target, zero-initialised output: the loss starts at E[eps^2] = 1 and must fall
    well below it (measured: 0.94 over the first 10 steps, 0.16 over steps 50-100 and 0.15 over
    the last 50 of 200, for this 8-channel UNet on the 8x8 digits, batch 16)."""
    res = train(data=digits(8), steps=150, batch_size=16, lr=3e-3, warmup_steps=10, ckpt_every=0,
                sample_n=0, model_kwargs={"ch": 8, "ch_mult": [1, 2], "attn_resolutions": [], "num_groups": 4},
                progress=False, metric=False, threads=1, out_dir=str(tmp_path))
    first, last = res.losses[:10], res.losses[-50:]
    assert all(math.isfinite(v) for v in res.losses)
    assert 0.7 < sum(first) / len(first) < 1.3
    assert sum(last) / len(last) < 0.4 * sum(first) / len(first)


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x, t):
        self.calls += 1
        return self.conv(x)


@pytest.mark.parametrize("decay", [0.5, 0.999])
def test_ema_equals_its_closed_form(tmp_path, decay):
    """ema_K = prod_n d_n * w_0 + sum_n (1 - d_n) prod_{j > n} d_j * w_n, d_n = min(decay,
    (1 + n) / (10 + n)) after step n = 1..K; buffers are copied, not averaged."""
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, name="random")
    model = Affine()
    recorded = [{k: v.detach().double().clone() for k, v in model.named_parameters()}]
    res = train(model=model, data=data, steps=5, batch_size=4, lr=0.05, warmup_steps=0, ema_decay=decay,
                optimizer="sgd", ckpt_every=0, sample_n=0, progress=False, metric=False, threads=1,
                out_dir=str(tmp_path),
                callback=lambda s, i: recorded.append({k: v.detach().double().clone()
                                                       for k, v in model.named_parameters()}))
    K = len(recorded) - 1
    d = [min(decay, (1 + n) / (10 + n)) for n in range(1, K + 1)]
    for name, p in res.ema.named_parameters():
        expected = math.prod(d) * recorded[0][name]
        for n in range(1, K + 1):
            expected = expected + (1 - d[n - 1]) * math.prod(d[n:]) * recorded[n][name]
        torch.testing.assert_close(p.detach().double(), expected, rtol=0, atol=1e-6)
        assert not torch.allclose(p.detach().double(), recorded[-1][name])   # an average, not a copy
    assert float(res.ema.calls) == float(res.model.calls) == K
