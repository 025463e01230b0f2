"""Triton vs reference (vs the CUDA extension when built) for every fused op, with achieved
memory bandwidth as a fraction of a measured device-to-device copy of the same traffic.

    python benchmarks/bench_triton_ops.py --out benchmarks/results/triton_ops_<device>.json
    pytest benchmarks/bench_triton_ops.py          # the same, as a (GPU-only) test

Shapes: 256x3x32x32 (CIFAR batch) and 64x128x16x16 (a UNet feature map), fp32 and bf16.
Timing: triton.testing.do_bench (median, L2 flushed between runs). Without a GPU everything
skips with the reason: the interpreter's timings say nothing about the kernels.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from typing import Callable

import torch

SHAPES = [(256, 3, 32, 32), (64, 128, 16, 16)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SKIP_REASON = ("needs a CUDA GPU: Triton kernels on CPU run only in the interpreter, whose "
               "timings say nothing about the kernels")


def _bench(fn: Callable) -> float:
    """Median milliseconds of fn() (L2 flushed between runs)."""
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _copy_gbps(nbytes: int) -> float:
    """Device-to-device copy bandwidth (read + write bytes / s) for a buffer of nbytes."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def _cases(shape, dtype):
    """(op, backend-interface args, bytes moved) for every op at this shape/dtype."""
    from ddpm_fast.schedule import NoiseSchedule
    dev = torch.device("cuda")
    B = shape[0]
    n = 1
    for s in shape:
        n *= s
    es = torch.empty((), dtype=dtype).element_size()
    table = NoiseSchedule.linear(1000).table(dev)
    x, m, nz = (torch.randn(shape, device=dev).to(dtype) for _ in range(3))
    t = torch.randint(1, 1000, (B,), device=dev)
    seed = torch.tensor(1234, dtype=torch.int64, device=dev)
    C = shape[1]
    w, b, temb = torch.randn(C, device=dev).to(dtype), torch.randn(C, device=dev).to(dtype), \
        torch.randn(B, C, device=dev).to(dtype)
    groups = 32 if C % 32 == 0 else 1
    return [
        ("q_sample", (x, t, table, nz), 3 * n * es),
        ("q_sample_seeded", (x, t, table, seed, 0, 2), 3 * n * es),
        ("reverse_step", (x, m, t, table, None, seed, 0, 0, 0, True, 1.0, None), 3 * n * es),
        ("ddim_step", (x, m, t, t - 1, table, None, seed, 0, 1.0, 0, True, 1.0, 1.0, None), 3 * n * es),
        ("temb_add", (x, temb), 2 * n * es),
        ("groupnorm_temb_silu", (x, w, b, temb, groups, 1e-5, 1, True), 2 * n * es),
        ("philox_normal", (seed, t, B, n // B, 0, 1), 4 * n),
    ]


def run(backends=("triton", "reference", "cuda")) -> dict:
    """All measurements as a JSON-able dict (device, versions, timestamp, rows)."""
    import triton

    from ddpm_fast.ops import dispatch
    dev = torch.device("cuda")
    available = [bk for bk in backends if dispatch.unavailable_reason(bk, "cuda") is None]
    rows = []
    for shape in SHAPES:
        for tag, dtype in DTYPES.items():
            for op, args, nbytes in _cases(shape, dtype):
                copy_gbps = _copy_gbps(nbytes // 2)
                for bk in available:
                    try:
                        fn = dispatch.implementation(op, bk, dev)
                    except dispatch.BackendUnavailableError:
                        continue
                    ms = _bench(lambda: fn(*args))
                    gbps = nbytes / ms / 1e6
                    rows.append({"op": op, "backend": bk, "shape": list(shape), "dtype": tag,
                                 "us": round(ms * 1e3, 2), "GBps": round(gbps, 1),
                                 "copy_GBps": round(copy_gbps, 1), "frac_of_copy": round(gbps / copy_gbps, 3)})
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "rows": rows}


def _print(res: dict) -> None:
    print(f"# {res['device']}  torch {res['torch']}  triton {res['triton']}  {res['timestamp']}")
    print(f"{'op':22s} {'backend':10s} {'shape':18s} {'dtype':5s} {'us':>9s} {'GB/s':>8s} {'of copy':>8s}")
    for r in res["rows"]:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['op']:22s} {r['backend']:10s} {shape:18s} {r['dtype']:5s} {r['us']:9.2f} {r['GBps']:8.1f} "
              f"{r['frac_of_copy']:8.2f}")


def test_bench_triton_ops():
    import pytest
    if not torch.cuda.is_available():
        pytest.skip(SKIP_REASON)
    pytest.importorskip("triton")
    _print(run())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the results as JSON here (e.g. benchmarks/results/...json)")
    p.add_argument("--backends", default="triton,reference,cuda")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"skipped: {SKIP_REASON}")
        return 0
    res = run(tuple(a.backends.split(",")))
    _print(res)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
