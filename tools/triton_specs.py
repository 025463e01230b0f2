"""Every Triton kernel specialisation the launchers can pick, for ahead-of-time compile checks
(tools/gpu_check.py, tools/triton_aot.py). Built from each kernel's launch configs (CONFIGS next to
the kernel in ddpm_fast/ops/triton/) and the data dtypes the launchers take (fp32, fp16, bf16).

``aot_specs()`` is a list of ``AotSpec``: ``name`` ("reverse_step[fp32,BLOCK=1024,warps=4]"),
``op``, ``fn`` (the raw @triton.jit JITFunction), ``signature`` (every kernel arg in order ->
"*fp32" | "*fp16" | "*bf16" | "*fp64" | "*i64" | "i32" | "fp32" | "constexpr"), ``constexprs``
(name -> value), ``divisible_args`` (pointers and contiguous sizes the runtime specialises as
divisible by 16: attrs {(index,): [["tt.divisibility", 16]]} in Triton 3.9), ``num_warps``,
``num_stages`` and ``elementwise`` (True for kernels whose fp32 loads/stores should be 16-byte
vectors: ld.global.v4 / st.global.v4 in the PTX). Call it in a process without
TRITON_INTERPRET=1 (fn must be a JITFunction).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import triton

from ddpm_fast.ops.triton import (ddim_step, groupnorm_temb_silu, multistep_update, philox, q_sample, reverse_step,
                                  temb_add)
from ddpm_fast.ops.triton._common import ELEMENTWISE_CONFIGS

DTYPES = ("fp32", "fp16", "bf16")


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One kernel specialisation to compile ahead of time (see the module docstring)."""
    name: str
    op: str
    fn: Any                      # the raw @triton.jit JITFunction (not the autotuner)
    signature: dict              # arg name -> "*fp32" | "*fp64" | "*i64" | "i32" | "fp32" | "constexpr"
    constexprs: dict             # constexpr arg name -> value
    divisible_args: list         # args the runtime specialises as divisible by 16
    num_warps: int
    num_stages: int
    elementwise: bool


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


def _elementwise(fn, signature, variants, dtypes=DTYPES, sizes: Iterable[str] = ("N",)) -> list:
    """The specs of an element-wise kernel: every ELEMENTWISE_CONFIGS config x data dtype x variant.
    ``signature(ty)``: its args with data pointers of type ``ty`` ("*fp32", ...); ``variants``:
    (op name, tag suffix, constexprs) of each specialisation the launchers pick."""
    return [make_spec(op, fn, cfg, tag + suffix, signature("*" + tag), constexprs, elementwise=True, sizes=sizes)
            for cfg in ELEMENTWISE_CONFIGS for tag in dtypes for op, suffix, constexprs in variants]


def _philox() -> list:
    sig = {"out_ptr": "*fp32", "seed_ptr": "*i64", "t_ptr": "*i64", "sample_offset": "i32",
           "stream": "i32", "N": "i32"}
    return _elementwise(philox.philox_kernel, lambda ty: sig,
                        [("philox_normal" if normal else "philox_uniform", "",
                          {"T_STRIDE": 1, "NORMAL": normal, "SEED_OFFSET": True}) for normal in (True, False)],
                        dtypes=("fp32",))


def _q_sample() -> list:
    return _elementwise(q_sample.q_sample_kernel,
                        lambda ty: {"x0_ptr": ty, "noise_ptr": ty, "out_ptr": ty, "target_ptr": ty, "t_ptr": "*i64",
                                    "table_ptr": "*fp64", "seed_ptr": "*i64", "sample_offset": "i32", "N": "i32",
                                    "T": "i32"},
                        [("q_sample_seeded" if seeded else "q_sample", "",
                          {"T_STRIDE": 1, "SEEDED": seeded, "TARGET": 2 if seeded else 0, "F64": False,
                           "SEED_OFFSET": seeded}) for seeded in (False, True)])


def _reverse_step() -> list:
    # ":record": the sampler's path (reverse_step_out with the NaN record's masked atomic)
    return _elementwise(reverse_step.reverse_step_kernel,
                        lambda ty: {"x_ptr": ty, "m_ptr": ty, "noise_ptr": ty, "out_ptr": ty, "t_ptr": "*i64",
                                    "table_ptr": "*fp64", "seed_ptr": "*i64", "bad_ptr": "*i64",
                                    "sample_offset": "i32", "clip_range": "fp32", "guidance_scale": "fp32",
                                    "half": "i32", "N": "i32", "T": "i32"},
                        [("reverse_step:record" if record else "reverse_step", ",record" * record,
                          {"T_STRIDE": 0, "PRED": 0, "VAR": 0, "CLIP": True, "SEEDED": True, "GUIDED": False,
                           "RECORD": record, "F64": False, "SEED_OFFSET": True}) for record in (False, True)])


def _ddim_step() -> list:
    return _elementwise(ddim_step.ddim_step_kernel,
                        lambda ty: {"x_ptr": ty, "m_ptr": ty, "noise_ptr": ty, "out_ptr": ty, "t_ptr": "*i64",
                                    "tp_ptr": "*i64", "table_ptr": "*fp64", "seed_ptr": "*i64", "bad_ptr": "*i64",
                                    "sample_offset": "i32", "eta": "fp32", "clip_range": "fp32",
                                    "final_alpha_bar": "fp32", "guidance_scale": "fp32", "half": "i32", "N": "i32",
                                    "T": "i32"},
                        [("ddim_step:record" if record else "ddim_step", ",record" * record,
                          {"T_STRIDE": 0, "TP_STRIDE": 0, "PRED": 0, "CLIP": True, "NOISE": True, "SEEDED": True,
                           "GUIDED": False, "RECORD": record, "F64": False, "SEED_OFFSET": True})
                         for record in (False, True)])


def _multistep_update() -> list:
    return _elementwise(multistep_update.multistep_update_kernel,
                        lambda ty: {"x_ptr": ty, "m_ptr": ty, "h_ptr": ty, "out_ptr": ty, "x0_ptr": ty,
                                    "table_ptr": "*fp64", "step_ptr": "*i64", "guidance_scale": "fp32", "N": "i32",
                                    "S": "i32"},
                        [("multistep_update", "", {"K": 3, "GUIDED": True, "F64": False})])


def _temb_add() -> list:
    return _elementwise(temb_add.temb_add_kernel,
                        lambda ty: {"h_ptr": ty, "temb_ptr": ty, "out_ptr": ty, "numel": "i32", "HW": "i32"},
                        [("temb_add", "", {"F64": False})], sizes=("numel", "HW"))


def _groupnorm_temb_silu() -> list:
    gn = groupnorm_temb_silu
    specs = []
    configs = gn.CONFIGS
    base = {"C": "i32", "HW": "i32", "G": "i32", "CPG": "i32"}
    rect = {"S": "i32", "SH": "i32", "CPS": "i32", "HPS": "i32"}
    for tag in DTYPES:
        ty = "*" + tag
        sig = {"x_ptr": ty, "w_ptr": ty, "b_ptr": ty, "temb_ptr": ty, "out_ptr": ty, **base, "eps": "fp32"}
        for cfg in configs:
            specs.append(make_spec("groupnorm_temb_silu", gn.groupnorm_temb_silu_kernel, cfg,
                                   tag, sig, {"TEMB": 1, "SILU": True, "F64": False},
                                   elementwise=False, sizes=("C", "HW")))
        # the split path at its widest tile (HW >= 1024) and its narrowest rows (HW = 16)
        for rows, hwb in ((4, 1024), (256, 16)):
            tile = triton.Config({"ROWS": rows, "HWB": hwb}, num_warps=gn.SPLIT_WARPS, num_stages=1)
            stats_sig = {"x_ptr": ty, "temb_ptr": ty, "part_ptr": "*fp32", **base, **rect}
            specs.append(make_spec("groupnorm_temb_silu:split-stats", gn.groupnorm_stats_kernel, tile,
                                   tag + ",split-stats", stats_sig, {"TEMB": 1, "F64": False},
                                   elementwise=False, sizes=("C", "HW", "HPS")))
            apply_sig = {**sig, "part_ptr": "*fp32", **rect}
            specs.append(make_spec("groupnorm_temb_silu:split-apply", gn.groupnorm_apply_kernel, tile,
                                   tag + ",split-apply", apply_sig, {"TEMB": 1, "SILU": True, "F64": False, "SB": 64},
                                   elementwise=False, sizes=("C", "HW", "HPS")))
    return specs


def aot_specs() -> list:
    """Every kernel x launch config x data dtype (see the module docstring)."""
    return (_philox() + _q_sample() + _reverse_step() + _ddim_step() + _multistep_update() + _temb_add()
            + _groupnorm_temb_silu())
