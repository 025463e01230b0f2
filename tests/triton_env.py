"""Shared by the Triton test files: the device Triton runs on here (CUDA, or the CPU through
TRITON_INTERPRET=1, which conftest.py sets), and a module-level skip when it cannot run."""
import pytest
import torch

from ddpm_fast.ops import dispatch

HAS_CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if HAS_CUDA else "cpu")


def triton_ops_or_skip():
    """torch.ops.ddpm_fast_triton, or skip the calling test module with the reason."""
    why = dispatch.unavailable_reason("triton", DEV.type)
    if why:
        pytest.skip(f"triton backend unavailable: {why}", allow_module_level=True)
    return torch.ops.ddpm_fast_triton
