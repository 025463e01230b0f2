"""Edge values of the ops where a formula degenerates, on every backend, against float64 closed
forms written here (docs/ops_contract.md): DDIM towards an ᾱ below ᾱ_t (the posterior variance
factor 1 − ᾱ_t/ᾱ_prev is negative: σ = 0), GroupNorm of one element per group (0 before the
affine), and eps = 0 refused by the front."""
import math

import pytest
import torch

import ddpm_fast
from ddpm_fast import ops
from ddpm_fast.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.linear(20)
_STATUS = ddpm_fast.backends()
BACKENDS = [b for b in ("reference", "cpp", "triton") if _STATUS.get(b) == "available"]
if _STATUS.get("cuda") == "available":
    BACKENDS.append(pytest.param("cuda", marks=pytest.mark.cuda))


def _dev(backend):
    return torch.device("cuda" if backend == "cuda" else "cpu")


def _ddim_closed_form(x, m, a, a_prev):
    """Song et al. eq. 12 with σ = 0, epsilon prediction, in float64."""
    x0 = (x - math.sqrt(1 - a) * m) / math.sqrt(a)
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_towards_a_lower_alpha_bar_is_finite_and_deterministic(backend, eta):
    """final_alpha_bar = 0.5 below ᾱ_19 of linear(20): σ = 0 for every eta, so the noise is unused."""
    a = float(SCHEDULE.alphas_cumprod[19])
    assert 0.5 < a, "the case needs final_alpha_bar below ᾱ_t"
    dev = _dev(backend)
    x = torch.tensor([[1.541, -0.25, 3.0]], dtype=torch.float32, device=dev)
    m = torch.tensor([[0.3, -1.2, 0.0]], dtype=torch.float32, device=dev)
    noise = torch.full_like(x, 7.0)
    got = ops.ddim_step(x, m, 19, -1, SCHEDULE, eta=eta, noise=noise if eta else None,
                        final_alpha_bar=0.5, clip_denoised=False, prediction_type="epsilon", backend=backend)
    want = torch.tensor([[_ddim_closed_form(xi, mi, a, 0.5) for xi, mi in zip(x[0].tolist(), m[0].tolist())]],
                        dtype=torch.float64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 1), (3, 2, 1, 1)])
@pytest.mark.parametrize("apply_silu", [False, True])
def test_groupnorm_of_one_element_per_group_is_the_bias(backend, shape, apply_silu):
    """x - mean = 0 when a group holds one value: the output is bias (then SiLU), on every backend.
    eps = 0.1 keeps 1/sqrt(eps) small, so the float32 rounding of a kernel's x * scale - mean * scale
    stays far below the tolerance."""
    dev = _dev(backend)
    C = shape[1]
    x = torch.randn(shape, device=dev)
    weight = torch.linspace(0.5, 2.0, C, device=dev)
    bias = torch.linspace(-0.7, 0.4, C, device=dev)
    got = ops.groupnorm_temb_silu(x, weight, bias, C, eps=0.1, apply_silu=apply_silu, backend=backend)
    b = bias.double().cpu()
    b = b * torch.sigmoid(b) if apply_silu else b
    want = b.reshape(1, C, *([1] * (len(shape) - 2))).expand(shape)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eps", [0.0, -1e-5])
def test_groupnorm_refuses_eps_not_positive(backend, eps):
    dev = _dev(backend)
    x, w = torch.randn(2, 1, 1, device=dev), torch.ones(1, device=dev)
    with pytest.raises(ValueError, match=r"eps must be a finite number in \(0, inf\)"):
        ops.groupnorm_temb_silu(x, w, w, 1, eps=eps, backend=backend)


def test_groupnorm_cpp_op_refuses_eps_zero_directly():
    """The C++ check behind direct torch.ops calls says the same as the front."""
    if _STATUS.get("cpp") != "available":
        pytest.skip("C++ extension not built")
    x, w = torch.randn(2, 1, 1), torch.ones(1)
    with pytest.raises(RuntimeError, match=r"eps must be a finite number in \(0, inf\), got 0"):
        torch.ops.ddpm_fast.groupnorm_temb_silu(x, w, w, None, 1, 0.0, 0, True)
