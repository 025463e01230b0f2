"""Skips for GPU tests that say why: a CUDA device alone is not enough for the extension's CUDA
kernels (the extension may be missing, or built by a torch without CUDA / without nvcc)."""
import pytest
import torch


def cuda_kernels_reason():
    """Why the extension's CUDA kernels cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    from ddpm_fast.ops import extension
    if not extension.available():
        return "the C++ extension is not built (python setup.py build_ext --inplace)"
    if not extension.has_cuda_kernels():
        return "the extension was built without CUDA kernels (torch without CUDA, or no nvcc at build time)"
    return None


requires_cuda_kernels = pytest.mark.skipif(cuda_kernels_reason() is not None,
                                           reason=f"CUDA kernels: {cuda_kernels_reason()}")


def auto_cuda_backend() -> str:
    """The backend "auto" gives CUDA tensors here (dispatch order: cuda, triton, reference)."""
    import ddpm_fast
    status = ddpm_fast.backends()     # on a CUDA machine: each backend's status for CUDA tensors
    return next((name for name in ("cuda", "triton") if status[name] == "available"), "reference")
