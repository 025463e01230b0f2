"""The "triton" backend: Triton kernels for every fused op, registered as torch ops
``torch.ops.ddpm_fast_triton.<op>`` (``torch.library.triton_op`` where available, so Inductor sees
the kernels; ``custom_op`` under TRITON_INTERPRET=1) and with the backend dispatcher, all from
the op table (ops/table.py: schema, fake, out-variant, differentiable) in one loop.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (set before triton is first
imported; for tests only, it is slow). One file per op, holding its kernel, launch configs and
launcher (a function named after the op, with the reference's signature): q_sample.py,
reverse_step.py, ddim_step.py, temb_add.py, groupnorm_temb_silu.py; philox.py holds the
in-kernel noise and the raw-stream ops. Launch configs: each kernel's CONFIGS
(``_common.ELEMENTWISE_CONFIGS``); the first is the default, DDPM_FAST_TRITON_AUTOTUNE=1 autotunes
over all of them. Every op copies non-contiguous inputs to contiguous and returns contiguous outputs.
"""
from __future__ import annotations

import inspect
import re
import types
from typing import Optional

import torch
import triton  # noqa: F401 — absolute: the Triton package; failure makes this backend unavailable

from ..autograd import attach_reference_backwards
from ..dispatch import register_backend
from ..registration import implementations_of, torch_op_callers
from ..table import OPS
from . import ddim_step, groupnorm_temb_silu, multistep_update, philox, q_sample, reverse_step, temb_add
from ._common import INTERPRET, NAMESPACE, USE_TRITON_OP

__all__ = ["unavailable_reason", "LAUNCHERS", "KERNEL_MODULES"]

BACKEND = "triton"
KERNEL_MODULES = (philox, q_sample, reverse_step, ddim_step, multistep_update, temb_add, groupnorm_temb_silu)
# op name -> launcher, gathered from the kernel files by the op table's names
LAUNCHERS = implementations_of(types.SimpleNamespace(
    **{k: v for m in KERNEL_MODULES for k, v in vars(m).items() if callable(v)}))


def unavailable_reason(backend: str, device_type: str) -> Optional[str]:
    """None if Triton kernels can run on ``device_type`` tensors here, else why not."""
    if device_type == "cuda":
        if INTERPRET:
            return "TRITON_INTERPRET=1 is set: Triton runs on CPU tensors only in this process"
        if not torch.cuda.is_available():
            return "no CUDA device"
        return None
    if device_type == "cpu":
        if INTERPRET:
            return None
        return "Triton runs on CPU only with TRITON_INTERPRET=1 set before triton is imported"
    return f"Triton cannot run on {device_type} tensors"


_PY_TYPES = {"Tensor": torch.Tensor, "Tensor?": Optional[torch.Tensor], "int": int, "float": float,
             "float?": Optional[float], "bool": bool}


def _annotate(spec, fn) -> None:
    """Give the launcher the table schema's argument types: triton_op infers its schema from
    annotations (it takes no schema), so the table stays the one place the schema is written."""
    schema = torch._C.parse_schema(spec.name + spec.schema)
    params = [inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=_PY_TYPES[re.sub(r"Optional\[(\w+)\]", r"\1?", str(a.type))],
                                **({"default": a.default_value} if a.has_default_value() else {}))
              for a in schema.arguments]
    rets = [torch.Tensor for _ in schema.returns]
    ret = None if not rets else rets[0] if len(rets) == 1 else tuple[tuple(rets)]
    fn.__signature__ = inspect.Signature(params, return_annotation=ret)


def _define(spec, fn) -> None:
    _annotate(spec, fn)
    make = torch.library.triton_op if USE_TRITON_OP else torch.library.custom_op
    op = make(spec.qualname(NAMESPACE), fn, mutates_args=spec.mutates)
    # inferred: torch names the alias sets itself; the table writes a, b, ... in argument order
    sets: dict = {}
    got = re.sub(r"\((\w+)!\)", lambda k: f"({sets.setdefault(k.group(1), chr(ord('a') + len(sets)))}!)",
                 str(op._opoverload._schema).replace("SymInt", "int"))
    if got[got.index("("):] != str(torch._C.parse_schema("x" + spec.schema))[1:]:
        raise RuntimeError(f"{spec.qualname(NAMESPACE)}: schema {got} differs from ops/table.py")
    op.register_fake(spec.fake)


for _spec in OPS:
    if _spec.name in LAUNCHERS:
        _define(_spec, LAUNCHERS[_spec.name])
register_backend(BACKEND, torch_op_callers(NAMESPACE))
attach_reference_backwards(NAMESPACE)  # training through the kernels (ops/autograd.py)
