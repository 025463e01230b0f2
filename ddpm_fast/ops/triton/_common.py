"""Shared plumbing of the Triton backend: launch configs, autotune switch, op registration, AOT specs.

Every element-wise kernel here has the same shape: grid ``(cdiv(N, BLOCK), B)``, program
``(pid, b)`` handles elements ``pid*BLOCK .. pid*BLOCK+BLOCK-1`` of sample row ``b`` (``N``
elements per sample, contiguous), so the per-sample timestep and coefficients are scalars and
the Philox quads ``e // 4`` never straddle two samples.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Optional

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Autotuning is opt-in (DDPM_FAST_TRITON_AUTOTUNE=1): it benchmarks on the first call of every new
# shape, which must not happen inside a CUDA-graph capture. Off, launchers use DEFAULT configs.
AUTOTUNE = os.environ.get("DDPM_FAST_TRITON_AUTOTUNE", "0") == "1" and not INTERPRET
# torch.library.triton_op (torch >= 2.6) lets Inductor see the kernels; the interpreter's kernels
# are not JITFunctions, so under TRITON_INTERPRET=1 ops are opaque torch.library.custom_ops.
USE_TRITON_OP = (not INTERPRET and hasattr(torch.library, "triton_op")
                 and hasattr(torch.library, "wrap_triton"))
NAMESPACE = "ddpm_fast_triton"

DATA_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
AOT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Element-wise configs for Hopper (HOPPER.md: 16-byte accesses, several loads in flight).
# BLOCK / (32 * num_warps) elements per thread: 1024/4 warps = 8 fp32 per thread = two 16-byte
# vectors per tensor per thread, one for bf16/fp16. 1024 also divides a 3x32x32 sample row (3072)
# exactly, so no lane idles there. Not yet timed on a GPU (none was lent to this task).
ELEMENTWISE_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4, num_stages=1),   # default
    triton.Config({"BLOCK": 2048}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK": 2048}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK": 4096}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK": 512}, num_warps=2, num_stages=1),    # small tensors; still 8 per thread
]
# Registers (gpu_check, Triton 3.9 ptxas, sm_80 / sm_90), all spill-free: noise kernels at 8
# elements per thread 28-52, at 16 per thread (2048/4, 4096/8) 40-86 (ddim_step fp32 4096/8 on
# sm_90 the most), far below the 255 per thread limit.
# Every config keeps >= 8 elements per thread: the in-kernel noise of 16-bit kernels is laid out
# for 8 (philox._philox_block, QPT=2); 4 per thread (512 / 4 warps) gave 8-byte accesses and a
# shared-memory shuffle of the noise in the AOT PTX.


def config_kwargs(cfg: triton.Config) -> dict:
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def elementwise_grid(B: int, N: int):
    return lambda meta: (triton.cdiv(N, meta["BLOCK"]), B)


def launch(kernel, tuned, grid_fn, args: tuple, constexprs: dict, configs=ELEMENTWISE_CONFIGS):
    """Launch ``kernel`` (raw JITFunction) with configs[0], or its autotuner ``tuned`` when on."""
    if AUTOTUNE and tuned is not None:
        k = torch.library.wrap_triton(tuned) if USE_TRITON_OP else tuned
        k[grid_fn](*args, **constexprs)
        return
    cfg = configs[0]
    k = torch.library.wrap_triton(kernel) if USE_TRITON_OP else kernel
    k[grid_fn(cfg.kwargs)](*args, **constexprs, **config_kwargs(cfg))


def autotuned(kernel, key: list, restore: Iterable[str] = (), configs=ELEMENTWISE_CONFIGS):
    """The autotuner over the same configs the plain launcher uses (configs[0] when tuning is off).
    ``restore`` names outputs that may alias inputs (restored between benchmark runs)."""
    if INTERPRET:
        return None
    kw = {"restore_value": list(restore)} if restore else {}
    return triton.autotune(configs=configs, key=key, **kw)(kernel)


def define_op(name: str, mutates_args: Iterable[str] = ()):
    """Register ``fn`` as torch op ``ddpm_fast_triton::<name>`` (triton_op where possible)."""
    def deco(fn: Callable):
        qual = f"{NAMESPACE}::{name}"
        if USE_TRITON_OP:
            return torch.library.triton_op(qual, fn, mutates_args=tuple(mutates_args))
        return torch.library.custom_op(qual, fn, mutates_args=tuple(mutates_args))
    return deco


# --- input checks (the Python front validates too; these guard direct backend calls) -----------

def check_data(name: str, x: torch.Tensor, device: Optional[torch.device] = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DATA_DTYPES:
        raise TypeError(f"triton backend: {name} must be float32, float16, bfloat16 or float64, got {x.dtype}")
    check_device(name, x, device)


def check_device(name: str, x: torch.Tensor, device: Optional[torch.device] = None) -> None:
    if x.device.type == "cuda":
        pass
    elif x.device.type == "cpu":
        if not INTERPRET:
            raise ValueError(f"triton backend: {name} is a CPU tensor; CPU needs TRITON_INTERPRET=1 "
                             "set before triton is imported")
    else:
        raise ValueError(f"triton backend: {name} is on {x.device}, which Triton cannot run on")
    if device is not None and x.device != device:
        raise ValueError(f"triton backend: {name} is on {x.device} but the data is on {device}")


def check_same_shape(name: str, x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"triton backend: {name} has shape {tuple(x.shape)}, expected {tuple(ref.shape)}")


def check_timestep(name: str, t: torch.Tensor, B: int, device: torch.device) -> int:
    """Validate t (int32/int64, [] or [B]) and return its stride over the batch (0 or 1)."""
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"triton backend: {name} must be an int32/int64 tensor")
    check_device(name, t, device)
    if t.numel() == 1:
        return 0
    if t.dim() != 1 or t.numel() != B:
        raise ValueError(f"triton backend: {name} must have shape [] or [{B}], got {tuple(t.shape)}")
    return 1


def check_table(table: torch.Tensor, device: torch.device) -> None:
    if not isinstance(table, torch.Tensor) or table.dtype != torch.float64 or table.dim() != 2 \
            or table.shape[1] != 16:
        raise ValueError("triton backend: table must be the float64 [T, 16] schedule table")
    check_device("table", table, device)


def check_seed(seed: Optional[torch.Tensor], device: torch.device) -> None:
    if seed is None:
        return
    if not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.numel() != 1:
        raise TypeError("triton backend: seed must be an int64 tensor [] or [1]")
    check_device("seed", seed, device)


def check_offset(sample_offset: int) -> None:
    if not 0 <= sample_offset < 2 ** 32:
        raise ValueError(f"triton backend: sample_offset must be in [0, 2**32), got {sample_offset}")


def rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """x as a contiguous tensor (copied if it is not: documented behaviour), B and N = numel / B."""
    x = x.contiguous()
    B = x.shape[0]
    return x, B, (x.numel() // B if B else 0)


# --- device-side helpers -------------------------------------------------------------------------

@triton.jit
def to_compute(v, F64: tl.constexpr):
    """Element math dtype: float64 for float64 data (as the reference does), else float32."""
    if F64:
        return v.to(tl.float64)
    else:
        return v.to(tl.float32)


@triton.jit
def load_coef(table_ptr, t, COL: tl.constexpr, F64: tl.constexpr):
    """table[t, COL] (float64 in memory) in the compute dtype; t is a device scalar."""
    return to_compute(tl.load(table_ptr + t * 16 + COL), F64)


@triton.jit
def load_timestep(t_ptr, b, T_STRIDE: tl.constexpr):
    return tl.load(t_ptr + b * T_STRIDE).to(tl.int64)


# --- ahead-of-time compile specs (contract with ddpm_fast.tools.gpu_check) ---------------------

@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One kernel specialisation to compile ahead of time (see ``aot_specs``)."""
    name: str
    op: str
    fn: Any                      # the raw @triton.jit JITFunction (not the autotuner)
    signature: dict              # arg name -> "*fp32" | "*fp64" | "*i64" | "i32" | "fp32" | "constexpr"
    constexprs: dict             # constexpr arg name -> value
    divisible_args: list         # args the runtime specialises as divisible by 16
    num_warps: int
    num_stages: int
    elementwise: bool


_TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def triton_type(dtype: torch.dtype) -> str:
    return _TY[dtype]


def make_spec(op: str, fn, cfg: triton.Config, tag: str, signature: dict, constexprs: dict,
              elementwise: bool, sizes: Iterable[str] = ("N",)) -> AotSpec:
    """An AotSpec with ``cfg``'s meta-parameters folded into signature/constexprs. Pointers and
    the contiguous size args ``sizes`` are marked divisible by 16, as the runtime specialises
    16-byte-aligned tensors and sizes that are multiples of 16."""
    sig = dict(signature)
    cx = dict(constexprs)
    for k, v in cfg.kwargs.items():
        sig[k] = "constexpr"
        cx[k] = v
    for k in cx:
        sig[k] = "constexpr"
    names = list(fn.arg_names)
    missing = [a for a in names if a not in sig]
    if missing:
        raise AssertionError(f"spec for {fn.__name__} misses args {missing}")
    sig = {a: sig[a] for a in names}
    div = [a for a in names if sig[a].startswith("*") or a in tuple(sizes)]
    blk = ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    name = f"{op}[{tag},{blk},warps={cfg.num_warps}]"
    return AotSpec(name=name, op=op, fn=fn, signature=sig, constexprs=cx, divisible_args=div,
                   num_warps=cfg.num_warps, num_stages=cfg.num_stages, elementwise=elementwise)


@triton.jit
def sqrt_rn(v, F64: tl.constexpr):
    """Correctly rounded sqrt (tl.sqrt may be approximate for float32; float64 sqrt is exact)."""
    if F64:
        return tl.sqrt(v)
    else:
        return tl.sqrt_rn(v)


@triton.jit
def div_rn(a, b, F64: tl.constexpr):
    """Correctly rounded a / b, as torch divides."""
    if F64:
        return a / b
    else:
        return tl.div_rn(a, b)


_INTERPRET_BF16_RNE: tl.constexpr = tl.constexpr(INTERPRET)


@triton.jit
def to_out(v, ty: tl.constexpr):
    """v in the output dtype ``ty``, rounded to nearest even. The GPU's cast does that; Triton's
    interpreter truncates float32 -> bfloat16, so there the rounding is done on the bits."""
    if _INTERPRET_BF16_RNE and ty == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(ty)
