"""UNet construction and forward inputs that used to be accepted and give NaN or a misleading
error: ch 2 or 3 (the sinusoidal embedding divides by dim // 2 - 1 = 0), num_classes=0,
num_groups=0, class labels outside [0, num_classes] (num_classes is the null class), an input dtype that is not the weights'."""
import math

import pytest
import torch

from ddpm_fast.models import UNet
from ddpm_fast.ops import sinusoidal_embedding


def _small(**kw):
    cfg = dict(in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
               dropout=0.0, resolution=8, num_groups=4)
    cfg.update(kw)
    return UNet(**cfg).eval()


@pytest.mark.parametrize("dim", [2, 3])
def test_sinusoidal_embedding_refuses_a_zero_frequency_span(dim):
    t = torch.tensor([0, 5, 999])
    with pytest.raises(ValueError, match="dim // 2 - downscale_freq_shift must be > 0"):
        sinusoidal_embedding(t, dim)
    # with no shift the single frequency is exp(0) = 1: sin(t), cos(t)
    e = sinusoidal_embedding(t, dim, downscale_freq_shift=0.0)
    assert torch.isfinite(e).all()
    torch.testing.assert_close(e[:, 0], torch.sin(t.double()).float())
    torch.testing.assert_close(e[:, 1], torch.cos(t.double()).float())


def test_sinusoidal_embedding_dim_4_matches_the_closed_form():
    t = torch.tensor([0, 7, 999])
    e = sinusoidal_embedding(t, 4)
    # half = 2 frequencies exp(-ln(10000) * i / (2 - 1)), i = 0, 1: 1 and 1e-4
    f = torch.tensor([1.0, 1e-4], dtype=torch.float64)
    args = t.double()[:, None] * f
    torch.testing.assert_close(e, torch.cat([args.sin(), args.cos()], 1).float())


@pytest.mark.parametrize("ch", [2, 3])
def test_unet_ch_below_4_is_refused(ch):
    with pytest.raises(ValueError, match=f"ch must be an int >= 4, got {ch}"):
        _small(ch=ch, num_groups=1)
    m = _small(ch=4, num_groups=1)           # the smallest width works, and is finite
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(2, 1, 8, 8), torch.tensor([0, 999]))).all()


@pytest.mark.parametrize("kw,name", [({"num_classes": 0}, "num_classes"), ({"num_groups": 0}, "num_groups"),
                                     ({"num_groups": -1}, "num_groups"), ({"in_channels": 0}, "in_channels"),
                                     ({"out_channels": 0}, "out_channels"), ({"ch_mult": (1, 0)}, "ch_mult")])
def test_zero_sizes_are_refused(kw, name):
    with pytest.raises(ValueError, match=name):
        _small(**kw)


def test_class_labels_outside_the_range_are_named():
    m = _small(num_classes=3)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        m(x, t, y=torch.tensor([0, 2]))
        m(x, t, y=torch.tensor([3, 3]))          # 3 = num_classes is the null class
        for bad in ([0, 4], [-1, 0]):
            with pytest.raises(ValueError, match=r"in \[0, num_classes=3\]"):
                m(x, t, y=torch.tensor(bad))
        y = torch.tensor([0, 1])
        m(x, t, y=y)
        y[1] = 7                                  # changed in place after a good call: re-checked
        with pytest.raises(ValueError, match="num_classes=3"):
            m(x, t, y=y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_input_dtype_must_match_the_weights(dtype):
    m = _small()
    with torch.no_grad(), pytest.raises(TypeError, match=f"x is {dtype} but the model's weights are torch.float32"):
        m(torch.randn(2, 1, 8, 8, dtype=dtype), torch.tensor([1, 2]))


def test_autocast_and_a_converted_model_accept_other_dtypes():
    m = _small()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m(x.bfloat16(), t).float()).all()
    m64 = _small().double()
    with torch.no_grad():
        out = m64(x.double(), t)
    assert out.dtype == torch.float64 and not math.isnan(out.sum().item())
