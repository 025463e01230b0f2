"""Lets ``denoising_diffusion_pytorch`` import without its training-only dependencies.

The module imports its trainer's dependencies (torchvision, accelerate, ema_pytorch, pytorch_fid)
at module level; its ``Unet`` and ``GaussianDiffusion`` sampling use none of them, and `make deps`
installs it with --no-deps. Used by tests/test_dropin_lucidrains.py and
benchmarks/inductor_cpu_options.py.
"""
from __future__ import annotations

import sys
import types

# module -> the names denoising_diffusion_pytorch imports from it
STUBS = {"torchvision": ["transforms", "utils"], "accelerate": ["Accelerator"], "ema_pytorch": ["EMA"],
         "pytorch_fid": [], "pytorch_fid.fid_score": ["calculate_frechet_distance"],
         "pytorch_fid.inception": ["InceptionV3"]}


def stub_lucidrains_training_deps() -> None:
    """Put an empty module (its imported names set to None) in sys.modules for each of STUBS
    that does not import; the installed ones are left alone."""
    for name, attrs in STUBS.items():
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            for a in attrs:
                setattr(stub, a, None)
            sys.modules[name] = stub
