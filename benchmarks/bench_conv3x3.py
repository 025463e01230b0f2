"""ddpm_fast's CPU Winograd convolution (``ddpm_fast::conv3x3``, csrc/cpu/conv3x3.cpp) against ATen's
CPU convolution (``F.conv2d``: im2col + sgemm or oneDNN, ATen's pick), one thread, CPU time
(time.process_time), median of interleaved rounds:

    nice python -m benchmarks.bench_conv3x3            # the shapes below, a markdown table

Inputs channels-last, as Inductor hands them to a convolution of a compiled CPU model. The first
rows are the 3x3 convolutions of the small diffusers UNet2DModel of benchmarks/bench_cpu_targets.py
(32/64 channels, 3x32x32); the last ones, larger filters and batches, set
samplers/conv_pass.py's ``faster_than_aten``. "err" is each result's largest error against the
float64 convolution (ATen's float32 one beside it).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .bench_attention import _cpu_ms

SHAPES = [  # N, C, K, H (= W)
    (1, 64, 64, 16), (1, 32, 32, 32), (1, 64, 64, 32), (1, 96, 32, 32), (1, 128, 64, 16), (1, 96, 64, 16),
    (1, 64, 32, 32), (1, 32, 64, 16), (1, 32, 3, 32), (1, 3, 32, 32),
    (4, 64, 64, 16), (8, 64, 64, 32), (1, 128, 128, 32), (1, 256, 256, 16), (1, 256, 256, 8), (1, 512, 512, 8),
]


def main():
    import ddpm_fast.ops  # noqa: F401 — loads the extension (torch.ops.ddpm_fast)
    torch.set_num_threads(1)
    print(f"load {os.getloadavg()[0]:.2f}, torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    print("| N, C, K, HxW | ours ms | ATen ms | ATen / ours | err ours | err ATen |")
    print("|---|---|---|---|---|---|")
    for N, C, K, H in SHAPES:
        x = torch.randn(N, C, H, H).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(K, C, 3, 3), torch.randn(K)
        ours = lambda: torch.ops.ddpm_fast.conv3x3(x, w, b)
        aten = lambda: F.conv2d(x, w, b, padding=1)
        calls = max(3, int(4e8 / (2 * N * C * K * 9 * H * H)))
        o, a = _cpu_ms([ours, aten], rounds=7, calls=calls)
        ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
        e_o, e_a = ((f().double() - ref).abs().max().item() for f in (ours, aten))
        print(f"| {N}, {C}, {K}, {H}x{H} | {o:.3f} | {a:.3f} | {a / o:.2f}x | {e_o:.1e} | {e_a:.1e} |", flush=True)
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
