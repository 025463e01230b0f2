"""Shared plumbing of the Triton backend: launch configs, autotune switch, the launch itself.

Every element-wise kernel here has the same shape: a 1-D grid of ``B * cdiv(N, BLOCK)`` programs
(grid axis 0 takes 2**31 - 1 programs, axes 1 and 2 only 65535: too few for a batch); program
``pid`` handles elements ``start .. start+BLOCK-1`` of sample row ``b`` (``sample_block``; ``N``
elements per sample, contiguous), so the per-sample timestep and coefficients are scalars and
the Philox quads ``e // 4`` never straddle two samples.
Arguments are validated by the Python front (ddpm_fast/ops/__init__.py), once for every backend.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterable

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

# Element-wise configs: 16-byte accesses, several loads in flight per thread.
# BLOCK / (32 * num_warps) elements per thread: 1024/4 warps = 8 fp32 per thread = two 16-byte
# vectors per tensor per thread, one for bf16/fp16. 1024 also divides a 3x32x32 sample row (3072)
# exactly, so no lane idles there.
ELEMENTWISE_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4, num_stages=1),   # default
    triton.Config({"BLOCK": 2048}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK": 2048}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK": 4096}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK": 512}, num_warps=2, num_stages=1),    # small tensors; still 8 per thread
]
# Registers (make gpu-check, Triton 3.9 ptxas, sm_80 / sm_90), all spill-free: noise kernels at 8
# elements per thread 28-52, at 16 per thread (2048/4, 4096/8) 40-86 (ddim_step fp32 4096/8 on
# sm_90 the most), far below the 255 per thread limit.
# Every config keeps >= 8 elements per thread: the in-kernel noise of 16-bit kernels is laid out
# for 8 (philox._philox_block, QPT=2); 4 per thread (512 / 4 warps) gave 8-byte accesses and a
# shared-memory shuffle of the noise in the AOT PTX.


def config_kwargs(cfg: triton.Config) -> dict:
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def elementwise_grid(B: int, N: int):
    """B samples of N elements: one program per (sample, block), flattened on grid axis 0."""
    return lambda meta: (B * triton.cdiv(N, meta["BLOCK"]),)


def device_guard(x: torch.Tensor):
    """Launch on x's GPU whatever device is current (Triton launches on the current one)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def launch(kernel, tuned, grid_fn, args: tuple, constexprs: dict, configs=ELEMENTWISE_CONFIGS):
    """Launch ``kernel`` (raw JITFunction) with configs[0], or its autotuner ``tuned`` when on,
    on the device of the first argument."""
    with device_guard(args[0]):
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


def rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """x as a contiguous tensor (copied if it is not: documented behaviour), B and N = numel / B."""
    x = x.contiguous()
    B = x.shape[0]
    return x, B, (x.numel() // B if B else 0)


def write_out(x: torch.Tensor, out: torch.Tensor, into) -> None:
    """An out-variant's write: ``into(dst)`` writes x-shaped contiguous output into dst, which is
    ``out`` itself when it is contiguous (it may be x: each element is read before the same program
    writes it), else a contiguous temporary then copied into out (csrc/op_checks.h write_step_out)."""
    dst = out if out.is_contiguous() else torch.empty_like(x, memory_format=torch.contiguous_format)
    into(dst)
    if dst is not out:
        out.copy_(dst)


def timestep(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A timestep tensor ([] or [B], any strides: expanded, sliced) as contiguous values, and
    its stride over the batch in them (0: one value for all samples)."""
    return t.reshape(-1).contiguous(), 0 if t.numel() == 1 else 1


def seed_arg(seed, fallback: torch.Tensor) -> torch.Tensor:
    """The seed's values, contiguous: [1] (the key) or [2] = (key, device sample offset), or a
    placeholder pointer when the kernel reads none."""
    return seed.reshape(-1).contiguous() if seed is not None else fallback


def seed_offset(seed) -> bool:
    """The kernels' SEED_OFFSET: the seed is [2] and its second value adds to every sample index."""
    return seed is not None and seed.numel() == 2


# --- device-side helpers -------------------------------------------------------------------------

@triton.jit
def to_compute(v, F64: tl.constexpr):
    """Element math dtype: float64 for float64 data (as the reference does), else float32."""
    if F64:
        return v.to(tl.float64)
    else:
        return v.to(tl.float32)


@triton.jit
def guided_model_out(m_ptr, idx, mask, w, half, GUIDED: tl.constexpr, F64: tl.constexpr):
    """The model output a step reads at ``idx``: model_out's own, or with classifier-free guidance
    u + w (c - u) from the conditional element and the unconditional one ``half`` = B·N later
    (diffusers' formula and order; each half read once)."""
    m = to_compute(tl.load(m_ptr + idx, mask=mask), F64)
    if GUIDED:
        u = to_compute(tl.load(m_ptr + half + idx, mask=mask), F64)
        m = u + w * (m - u)
    return m


@triton.jit
def nonfinite(v):
    """Elementwise: v is NaN or ±inf."""
    return (v != v) | (tl.abs(v) == float("inf"))


@triton.jit
def guided_model_out_record(m_ptr, idx, mask, w, half, GUIDED: tl.constexpr, F64: tl.constexpr):
    """``guided_model_out`` and, per element, whether what it read is NaN/inf (each half checked
    before the combine): the steps' first_bad record (docs/ops_contract.md)."""
    m = to_compute(tl.load(m_ptr + idx, mask=mask), F64)
    bad = nonfinite(m)
    if GUIDED:
        u = to_compute(tl.load(m_ptr + half + idx, mask=mask), F64)
        bad = bad | nonfinite(u)
        m = u + w * (m - u)
    return m, bad & mask


@triton.jit
def record_bad(bad_ptr, t, bad, offs):
    """first_bad = max(first_bad, t) from the elements that saw a NaN/inf: a masked atomic max (no
    block reduction; finite blocks issue no atomic). Triton lays an atomic on one address out one
    element per thread, so the mask goes through shared memory once (a byte per element, in the
    RECORD specialisation only; the kernels' data loads and stores stay 16-byte vectors:
    tools/triton_specs.py compiles both specialisations)."""
    zero = offs * 0
    tl.atomic_max(bad_ptr + zero, zero.to(tl.int64) + t, mask=bad, sem="relaxed")


@triton.jit
def load_coef(table_ptr, t, T, COL: tl.constexpr, F64: tl.constexpr):
    """table[t, COL] (float64 in memory, 16 columns) in the compute dtype; NaN for t outside
    [0, T), as the CUDA kernels give (csrc/README.md), and the load itself stays in bounds."""
    ok = (t >= 0) & (t < T)
    v = tl.load(table_ptr + tl.where(ok, t, 0) * 16 + COL)
    return to_compute(tl.where(ok, v, float("nan")), F64)


@triton.jit
def load_timestep(t_ptr, b, T_STRIDE: tl.constexpr):
    return tl.load(t_ptr + b * T_STRIDE).to(tl.int64)


@triton.jit
def sample_block(N, BLOCK: tl.constexpr):
    """(b, start): the sample row of this program and its first element in the row."""
    pid = tl.program_id(0)
    nblk = tl.cdiv(N, BLOCK)
    return pid // nblk, (pid % nblk) * BLOCK


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
