"""ddpm_fast's CPU attention kernel (``ddpm_fast::attention``, csrc/cpu/attention.cpp) against ATen's
two CPU paths for F.scaled_dot_product_attention (the flash kernel, and the math path: bmm +
softmax + bmm), one thread, CPU time (time.process_time), median of interleaved rounds:

    nice python -m benchmarks.bench_attention            # the shapes below, a markdown table

Inputs as a diffusers attention block makes them: q, k, v [B, H, N, D] views of [B, N, H*D]
projections (head stride D). The first rows are the small diffusers UNet2DModel of
benchmarks/bench_cpu_targets.py (attention_head_dim 8: [1, 8, 256, 8] at 16x16). These numbers
set samplers/attention_pass.py's MAX_HEAD_DIM.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

SHAPES = [  # B, H, Nq, Nk, D
    (1, 8, 256, 256, 8), (1, 8, 64, 64, 8), (2, 8, 256, 256, 8), (1, 8, 1024, 1024, 8), (1, 8, 256, 77, 8),
    (1, 4, 256, 256, 16), (1, 2, 256, 256, 32), (1, 1, 256, 256, 64),
]


def _heads(B, H, N, D):
    return torch.randn(B, N, H * D).view(B, N, H, D).transpose(1, 2)


def _cpu_ms(fns, rounds: int, calls: int):
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for ts, f in zip(times, fns):
            c0 = time.process_time()
            for _ in range(calls):
                f()
            ts.append((time.process_time() - c0) * 1e3 / calls)
    return [statistics.median(ts) for ts in times]


def main():
    import ddpm_fast.ops  # noqa: F401 — loads the extension (torch.ops.ddpm_fast)
    torch.set_num_threads(1)
    aten = torch.ops.aten
    print(f"load {os.getloadavg()[0]:.2f}, torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    print("| B, H, Nq, Nk, D | ours ms | ATen flash ms | ATen math ms | flash / ours | max abs diff vs flash |")
    print("|---|---|---|---|---|---|")
    for B, H, Nq, Nk, D in SHAPES:
        q, k, v = _heads(B, H, Nq, D), _heads(B, H, Nk, D), _heads(B, H, Nk, D)
        s = D ** -0.5
        ours = lambda: torch.ops.ddpm_fast.attention(q, k, v, s)
        flash = lambda: aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        math = lambda: aten._scaled_dot_product_attention_math(q, k, v)[0]
        calls = max(3, int(2e7 / (B * H * Nq * Nk * D * 4)))
        o, f, m = _cpu_ms([ours, flash, math], rounds=7, calls=calls)
        err = (ours() - flash()).abs().max().item()
        print(f"| {B}, {H}, {Nq}, {Nk}, {D} | {o:.3f} | {f:.3f} | {m:.3f} | {f / o:.2f}x | {err:.1e} |")
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
