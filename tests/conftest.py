"""Shared fixtures and skips. The Triton interpreter must be switched on before triton is first
imported, so TRITON_INTERPRET is set here when no GPU is present (see Makefile)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
