"""The op table: every fused op declared once — name, schema, out-variant, differentiable, fake.

Everything else is generated from it in a loop: the ``ddpm_fast::`` schemas (``define``; the
C++ extension only adds kernels, csrc/README.md), the ``ddpm_fast_triton::`` ops
(ops/triton/__init__.py), the fakes torch.compile traces with, the reference-recompute backward
of the differentiable ops (ops/autograd.py), the float64 fallback of the compiled backends and the
dispatcher registrations (ops/dispatch.py ``register_backend``). Argument order is the backend
interface of ops/reference.py; semantics: docs/ops_contract.md.

This file imports only torch: scripts/build_cuda_extension.sh and tools/ load it by path in an
environment without ddpm_fast installed.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

NAMESPACE = "ddpm_fast"


def _like(arg: int) -> Callable:
    """Fake: one contiguous tensor shaped like positional argument ``arg``."""
    return lambda *a: torch.empty_like(a[arg], memory_format=torch.contiguous_format)


def _pair_like(arg: int) -> Callable:
    return lambda *a: (torch.empty_like(a[arg], memory_format=torch.contiguous_format),
                       torch.empty_like(a[arg], memory_format=torch.contiguous_format))


def _philox_fake(seed, t, batch, numel, sample_offset, stream):
    return seed.new_empty((batch, numel), dtype=torch.float32)


def _no_result(*args):
    return None


def _attention_fake(q, k, v, scale):
    # ATen's CPU flash layout: [B, H, Nq, D] over a contiguous [B, Nq, H, D] buffer
    B, H, Nq, D = q.shape
    return q.new_empty((B, Nq, H, D)).transpose(1, 2)


def _conv3x3_fake(x, weight, bias):
    # channels-last, the layout Inductor gives a CPU convolution's output
    N, _, H, W = x.shape
    return x.new_empty((N, weight.shape[0], H, W)).contiguous(memory_format=torch.channels_last)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One op. ``schema``: the argument list and returns, as torch.library writes them.
    ``out_of``: for an out-variant, the functional op whose result it writes into its argument
    ``out`` (the dispatcher-level function returns ``out``); arguments after ``out`` are extra
    outputs written in place (the steps' ``first_bad`` NaN record, docs/ops_contract.md). ``differentiable``: gets the
    reference-recompute backward. ``fake``: shapes and dtypes of the result from the inputs.
    ``reference``: the reference backend implements it (every op of the contract does).
    ``cuda``: the extension has a CUDA kernel for it (and Triton a launcher); False for a CPU-only
    op, which the dispatcher runs with the reference backend on other devices. ``tags``:
    ``torch.Tag``s of the schema (``flexible_layout``: Inductor hands the op its inputs in the
    layout it planned, without a copy to the traced strides)."""
    name: str
    schema: str
    fake: Callable
    out_of: Optional[str] = None
    differentiable: bool = False
    reference: bool = True
    cuda: bool = True
    tags: tuple = ()

    def qualname(self, namespace: str = NAMESPACE) -> str:
        return f"{namespace}::{self.name}"

    @property
    def mutates(self) -> tuple:
        """Names of the arguments the op writes (``Tensor(a!)`` in the schema)."""
        args = torch._C.parse_schema(self.name + self.schema).arguments
        return tuple(a.name for a in args if a.alias_info is not None and a.alias_info.is_write)

    @property
    def out_index(self) -> int:
        """Position of ``out`` among an out-variant's arguments (= the functional op's arity)."""
        args = torch._C.parse_schema(self.name + self.schema).arguments
        return next(i for i, a in enumerate(args) if a.name == "out")


# guidance_scale: None, or classifier-free guidance fused into the step — model_out is then
# [2B, ...] (conditional rows first) and the step reads m_u + w (m_c - m_u) (docs/ops_contract.md)
_STEP_ARGS = ("Tensor x_t, Tensor model_out, Tensor t, Tensor table, Tensor? noise, Tensor? seed, "
              "int sample_offset, int prediction_type, int variance_type, bool clip, float clip_range, "
              "float? guidance_scale")
# The out-variants of the steps write x_prev into ``out`` (which may be x_t itself) and, when
# ``first_bad`` (int64 [] or [1]) is given, record max(first_bad, t[b] of every sample b whose
# model output, as the step reads it, has a NaN/inf) in the same pass (docs/ops_contract.md)
_OUT_ARGS = "Tensor(a!) out, Tensor(b!)? first_bad=None"
_DDIM_ARGS = ("Tensor x_t, Tensor model_out, Tensor t, Tensor t_prev, Tensor table, Tensor? noise, Tensor? seed, "
              "int sample_offset, float eta, int prediction_type, bool clip, float clip_range, "
              "float final_alpha_bar, float? guidance_scale")
_PHILOX_ARGS = "(Tensor seed, Tensor t, int batch, int numel, int sample_offset, int stream) -> Tensor"

OPS = (
    # counter-based noise (Philox4x32-10): float32 [batch, numel] on seed's device
    OpSpec("philox_normal", _PHILOX_ARGS, _philox_fake),
    OpSpec("philox_uniform", _PHILOX_ARGS, _philox_fake),
    # the raw generator, for known-answer tests: counters int64 [n, 4], key int64 [2] -> words
    OpSpec("_philox4x32_10", "(Tensor counters, Tensor key) -> Tensor", _like(0), reference=False),
    OpSpec("q_sample", "(Tensor x0, Tensor t, Tensor table, Tensor noise) -> Tensor", _like(0),
           differentiable=True),
    OpSpec("q_sample_seeded", "(Tensor x0, Tensor t, Tensor table, Tensor seed, int sample_offset, "
           "int target_type) -> (Tensor, Tensor)", _pair_like(0), differentiable=True),
    OpSpec("reverse_step", f"({_STEP_ARGS}) -> Tensor", _like(0), differentiable=True),
    OpSpec("reverse_step_out", f"({_STEP_ARGS}, {_OUT_ARGS}) -> ()", _no_result, out_of="reverse_step"),
    OpSpec("ddim_step", f"({_DDIM_ARGS}) -> Tensor", _like(0), differentiable=True),
    OpSpec("ddim_step_out", f"({_DDIM_ARGS}, {_OUT_ARGS}) -> ()", _no_result, out_of="ddim_step"),
    # one step of a multistep solver (DPM-Solver++, UniPC): x0 = a x + b model_out, then
    # x_next = c_x x + c_0 x0 + sum_k c_k history[k], coefficients = row `step` of `table`;
    # guidance_scale as in the steps above (model_out [2B, ...], combined in the same pass)
    OpSpec("multistep_update", "(Tensor x, Tensor model_out, Tensor history, Tensor table, Tensor step, "
           "float? guidance_scale) -> (Tensor, Tensor)", _pair_like(0)),
    OpSpec("temb_add", "(Tensor h, Tensor temb) -> Tensor", _like(0), differentiable=True),
    OpSpec("groupnorm_temb_silu", "(Tensor x, Tensor weight, Tensor bias, Tensor? temb, int num_groups, "
           "float eps, int temb_mode, bool apply_silu) -> Tensor", _like(0), differentiable=True),
    # softmax(q k^T scale) v: q [B, H, Nq, D], k, v [B, H, Nk, D]; no mask, dropout or causality.
    # CPU only: the compiled sampler's kernel for small heads (samplers/attention_pass.py); on a GPU
    # the reference runs it (and compiled models keep their own attention)
    OpSpec("attention", "(Tensor q, Tensor k, Tensor v, float scale) -> Tensor", _attention_fake,
           differentiable=True, cuda=False),
    # 3x3 convolution, stride 1, padding 1, one group: x [N, C, H, W], weight [K, C, 3, 3], bias [K];
    # channels-last output. CPU only: the compiled sampler's Winograd kernel (samplers/conv_pass.py)
    OpSpec("conv3x3", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor", _conv3x3_fake,
           differentiable=True, cuda=False, tags=(torch.Tag.flexible_layout,)),
)
BY_NAME = {op.name: op for op in OPS}

_libraries: dict = {}  # namespace -> the torch.library.Library that defined it (kept alive)


def defined_schema(qualname: str) -> Optional[str]:
    """The schema registered for ``qualname`` in this process (without the name), or None."""
    try:
        s = str(torch._C._dispatch_find_schema_or_throw(qualname, "").schema)
    except RuntimeError:
        return None
    return s[s.index("("):]


def _normal(schema: str) -> str:
    return str(torch._C.parse_schema("x" + schema))[1:]


def mismatched(namespace: str = NAMESPACE) -> list:
    """Ops of the table whose schema differs from what is registered under ``namespace``."""
    return [op.name for op in OPS if defined_schema(op.qualname(namespace)) not in (None, _normal(op.schema))]


def define(namespace: str = NAMESPACE) -> None:
    """Define every op's schema under ``namespace`` once per process, with its fake. Ops that a
    library loaded earlier already defined (the CMake build: tools/op_schemas.py) are checked
    against the table instead."""
    if namespace in _libraries:
        return
    bad = mismatched(namespace)
    if bad:
        raise RuntimeError(f"{namespace}:: ops {bad} are registered with schemas that differ from "
                           "ddpm_fast/ops/table.py (a stale library was loaded first)")
    lib = torch.library.Library(namespace, "FRAGMENT")
    for op in OPS:
        if defined_schema(op.qualname(namespace)) is None:
            lib.define(op.name + op.schema, tags=op.tags)
        torch.library.register_fake(op.qualname(namespace), op.fake, lib=lib)
    _libraries[namespace] = lib


def cpp_source() -> str:
    """The TORCH_LIBRARY block defining the table's schemas in C++, for libraries loaded without
    Python (the CMake build generates it from here; setup.py's build needs none)."""
    defs = "\n".join(f'  m.def("{op.name}{op.schema}");' for op in OPS)
    return ("// Generated from ddpm_fast/ops/table.py by tools/op_schemas.py; do not edit.\n"
            "#include <torch/library.h>\n\nTORCH_LIBRARY(" + NAMESPACE + ", m) {\n" + defs + "\n}\n")
