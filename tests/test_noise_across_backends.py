"""What README.md promises about the same seed on every backend, checked as stated: the Philox
uniforms are bitwise equal, the normals (float32 Box-Muller through each backend's log/cos/sin)
agree to float32 rounding, and so do sampled images (not bitwise)."""
import pytest
import torch

import ddpm_fast
from ddpm_fast import ops
from ddpm_fast.models import UNet

BACKENDS = [b for b, status in ddpm_fast.backends().items() if status == "available" and b != "reference"]


def _device(backend):
    return torch.device("cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
                        else "cpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniforms_are_bitwise_equal(backend):
    dev = _device(backend)
    shape = (7, 3, 33) if backend != "triton" else (3, 2, 9)   # the interpreter is slow
    u = ops.rand(shape, 123, sample_offset=5, timestep=4, stream=1, device=dev, backend=backend)
    assert torch.equal(u.cpu(), ops.rand(shape, 123, sample_offset=5, timestep=4, stream=1, backend="reference"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_normals_agree_to_float32_rounding(backend):
    """README: max difference 4.8e-7 cpp vs reference (|z| up to ~5, so ~2 ulp): within 2e-6."""
    dev = _device(backend)
    shape = (7, 3, 33, 33) if backend != "triton" else (3, 2, 9)
    z = ops.randn(shape, 123, sample_offset=5, device=dev, backend=backend).cpu()
    ref = ops.randn(shape, 123, sample_offset=5, backend="reference")
    torch.testing.assert_close(z, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "cpp"])
def test_sampled_images_agree_to_float_rounding_not_bitwise(backend):
    """README: ~1e-6 between cpp and reference after 50 DDPM steps (tested within 1e-5)."""
    torch.manual_seed(0)
    m = UNet(in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
             resolution=8, num_groups=4, backend="reference").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    schedule = ddpm_fast.NoiseSchedule.linear(50)
    a = ddpm_fast.sample(m, (4, 1, 8, 8), schedule=schedule, seed=0, backend=backend)
    b = ddpm_fast.sample(m, (4, 1, 8, 8), schedule=schedule, seed=0, backend="reference")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
