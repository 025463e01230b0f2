"""ddpm_fast: fast DDPM training and sampling for PyTorch, exact against a plain-PyTorch reference.

    import ddpm_fast
    x0 = ddpm_fast.sample(model, (16, 3, 32, 32), seed=0)   # model(x, t) -> eps

See README.md; the ops' semantics are in docs/ops_contract.md.
"""
from .ops import (backends, ddim_step, get_backend, groupnorm_temb_silu, q_sample, reverse_step,
                  set_backend, sinusoidal_embedding, temb_add, use_backend)
from .schedule import NoiseSchedule

__version__ = "0.1.0"

__all__ = ["NoiseSchedule", "q_sample", "reverse_step", "ddim_step", "temb_add",
           "groupnorm_temb_silu", "sinusoidal_embedding", "backends", "set_backend",
           "get_backend", "use_backend", "sample", "Shared", "UNet", "train", "clear_cache", "__version__"]


def __getattr__(name):
    # heavier modules load on first use, so `import ddpm_fast` stays cheap
    if name == "sample":
        from .sampling import sample
        return sample
    if name == "Shared":
        from .samplers.chunks import Shared
        return Shared
    if name == "UNet":
        from .models.unet import UNet
        return UNet
    if name == "clear_cache":
        from .samplers.fast import clear_cache
        return clear_cache
    if name == "train":
        from .training.trainer import train
        return train
    raise AttributeError(f"module 'ddpm_fast' has no attribute {name!r}")
