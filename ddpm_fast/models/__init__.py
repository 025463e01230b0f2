"""Models: the DDPM UNet of Ho et al. 2020, its norms running through the fused-op dispatcher."""
from .unet import UNet

__all__ = ["UNet"]
