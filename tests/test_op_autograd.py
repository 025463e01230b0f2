"""Training through the fused ops: gradients equal the reference's (ops/autograd.py)."""
import pytest
import torch

from ddpm_fast import NoiseSchedule, backends, groupnorm_temb_silu, q_sample, temb_add

FUSED = [b for b in ("cpp", "triton") if backends()[b] == "available"]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("mode", ["before_norm", "after_norm", None])
def test_groupnorm_temb_silu_gradients(backend, mode):
    x, temb = torch.randn(2, 8, 5, 3), torch.randn(2, 8)
    w, b = torch.randn(8), torch.randn(8)
    gy = torch.randn(2, 8, 5, 3)

    def grads(be):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b, temb)]
        y = groupnorm_temb_silu(leaves[0], leaves[1], leaves[2], 4, leaves[3] if mode else None,
                                temb_mode=mode, backend=be)
        y.backward(gy)
        return [t.grad for t in leaves]

    for got, want in zip(grads(backend), grads("reference")):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", FUSED)
def test_temb_add_and_q_sample_gradients(backend):
    h = torch.randn(2, 4, 3, 3, requires_grad=True)
    temb = torch.randn(2, 4, requires_grad=True)
    temb_add(h, temb, backend=backend).sum().backward()
    torch.testing.assert_close(h.grad, torch.ones_like(h))
    torch.testing.assert_close(temb.grad, torch.full_like(temb, 9.0))
    x0 = torch.randn(2, 4, 3, 3, requires_grad=True)
    s = NoiseSchedule.linear(100)
    q_sample(x0, torch.tensor([3, 50]), s, torch.randn(2, 4, 3, 3), backend=backend).sum().backward()
    torch.testing.assert_close(x0.grad[1], torch.full_like(x0.grad[1], s.alphas_cumprod[50].sqrt().item()))


def test_a_fused_backend_is_tested():
    assert FUSED, "neither the cpp nor the triton backend is available: no fused gradient tested"


@pytest.mark.parametrize("backend", FUSED)
def test_sampler_steps_differentiate_like_the_reference(backend):
    """reverse_step / ddim_step with requires_grad inputs (guidance through a step): real
    gradients equal to the reference's (ops/autograd.py), not None."""
    from ddpm_fast import ddim_step, reverse_step
    s = NoiseSchedule.linear(50)
    x, m, gy = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)

    def grads(step, be):
        leaves = [x.clone().requires_grad_(True), m.clone().requires_grad_(True)]
        y = step(*leaves, be)
        assert y.requires_grad
        y.backward(gy)
        return [t.grad for t in leaves]

    for step in (lambda a, b, be: reverse_step(a, b, torch.tensor([7, 30]), s, seed=3, backend=be),
                 lambda a, b, be: ddim_step(a, b, 30, 10, s, eta=0.5, seed=3, backend=be)):
        for got, want in zip(grads(step, backend), grads(step, "reference")):
            assert got is not None
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_reverse_step_out_with_grad_is_a_clear_error():
    from ddpm_fast import reverse_step
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="has no gradient; call it without out="):
        reverse_step(x, torch.randn(2, 3), 4, NoiseSchedule.linear(10), seed=1, out=torch.empty(2, 3))
