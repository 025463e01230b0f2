"""Backward passes for the fused ops: the op's reference twin, recomputed under autograd.

The fused kernels (C++, CUDA, Triton) are forward-only. Training through them (the UNet's
GroupNorm+temb+SiLU, temb_add, q_sample of a differentiable x0; a sampler step differentiated
for guidance) takes its gradients from the reference math, recomputed from the saved inputs in the backward pass — the memory profile of
activation checkpointing, and no second copy of the math to keep in sync.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import reference
from .table import OPS


def attach_reference_backwards(namespace: str) -> None:
    """Register the reference-recompute backward for every op of ``namespace`` that the op table
    marks differentiable (ops/table.py)."""
    for spec in OPS:
        if spec.differentiable and hasattr(getattr(torch.ops, namespace), spec.name):
            attach_reference_backward(spec.qualname(namespace), getattr(reference, spec.name))


def attach_reference_backward(qualname: str, reference_fn: Callable) -> None:
    def setup_context(ctx, inputs, output):
        ctx.is_tensor = [isinstance(x, torch.Tensor) for x in inputs]
        ctx.save_for_backward(*[x if isinstance(x, torch.Tensor) else None for x in inputs])
        ctx.others = [None if isinstance(x, torch.Tensor) else x for x in inputs]

    def backward(ctx, *grads):
        args, wrt = [], []
        for i, (is_t, t, other) in enumerate(zip(ctx.is_tensor, ctx.saved_tensors, ctx.others)):
            if is_t and ctx.needs_input_grad[i]:
                t = t.detach().requires_grad_(True)
                wrt.append((i, t))
            args.append(t if is_t else other)
        result = [None] * len(args)
        if not wrt:
            return tuple(result)
        with torch.enable_grad():
            outs = reference_fn(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        if pairs:
            got = torch.autograd.grad([o for o, _ in pairs], [t for _, t in wrt],
                                      [g for _, g in pairs], allow_unused=True)
            for (i, _), g in zip(wrt, got):
                result[i] = g
        return tuple(result)

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
