"""Backends registered from the op table (ops/table.py) in one loop each: no op is named here.

- ``implementations_of(obj)``: a backend's functions looked up by op name (module attributes);
  an out-variant it lacks is derived from its functional op (result copied into ``out``; such a
  derived variant cannot record ``first_bad`` and refuses one).
- ``torch_op_callers(namespace)``: dispatcher-level callers of ``torch.ops.<namespace>.<op>``,
  with float64 data (which the compiled kernels do not take) routed to the reference backend and
  out-variants returning ``out``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .table import OPS, OpSpec


def implementations_of(obj) -> dict:
    """{op name: function} for every op of the table that ``obj`` implements."""
    impls = {}
    for spec in OPS:
        fn = getattr(obj, spec.name, None)
        if fn is None and spec.out_of and spec.out_of in impls:
            fn = _out_variant(spec, impls[spec.out_of])
        if fn is not None:
            impls[spec.name] = fn
    return impls


def _out_variant(spec: OpSpec, functional: Callable) -> Callable:
    k = spec.out_index

    def out_variant(*args):
        if any(a is not None for a in args[k + 1:]):
            raise NotImplementedError(f"{spec.name} derived from {spec.out_of} cannot record first_bad")
        return args[k].copy_(functional(*args[:k]))
    return out_variant


def _data_args(spec: OpSpec) -> list:
    """Positions of the tensor arguments holding data (every Tensor but the float64 table)."""
    args = torch._C.parse_schema(spec.name + spec.schema).arguments
    return [i for i, a in enumerate(args) if "Tensor" in str(a.type) and a.name != "table"]


def torch_op_callers(namespace: str, f64_fallback: Optional[dict] = None) -> dict:
    """{op name: caller} for the ops of the table registered under ``namespace`` that the
    reference backend implements. ``f64_fallback``: op name -> the function float64 data goes to."""
    ns = getattr(torch.ops, namespace)
    callers = {}
    for spec in OPS:
        if spec.reference and hasattr(ns, spec.name):
            fallback = (f64_fallback or {}).get(spec.name)
            callers[spec.name] = _caller(spec, getattr(ns, spec.name), fallback)
    return callers


def _caller(spec: OpSpec, op, fallback: Optional[Callable]) -> Callable:
    data = _data_args(spec)   # first_bad (int64) never sends a call to the float64 fallback
    out = spec.out_index if spec.out_of else None

    def call(*args):
        # a plain loop, not any(<generator>): samplers call this once per step (~1 us saved)
        if fallback is not None:
            for i in data:
                if i < len(args) and isinstance(args[i], torch.Tensor) and args[i].dtype == torch.float64:
                    return fallback(*args)
        result = op(*args)
        return result if out is None else args[out]
    call.__name__ = spec.name
    return call
