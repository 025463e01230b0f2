"""C++ extension ("cpp" backend, CPU) vs the reference backend, same process, same inputs.

    pytest benchmarks/bench_extension_ops.py --benchmark-only      # ratios printed at the end

Ops: q_sample (given noise and seeded), the fused reverse_step (noise drawn in the kernel, the
sampler's path; and with given noise), groupnorm_temb_silu (temb before the norm, SiLU), at
256x3x32x32 (CIFAR batch) and 64x128x16x16 (a UNet feature map), float32, all intra-op threads.
pytest-benchmark times the extension; the speedup uses medians of interleaved runs of both
backends (robust to a shared, loaded machine) and is stored in ``extra_info`` with the versions.
On a GPU the same cases run for the "cuda" backend, with achieved bandwidth as a fraction of a
measured device-to-device copy.
"""
from __future__ import annotations

import platform
import statistics
import time

import pytest
import torch

from benchmarks.timing import interleaved_ms, once_ms, sync
from ddpm_fast.ops import extension, reference
from ddpm_fast.schedule import NoiseSchedule

SHAPES = [(256, 3, 32, 32), (64, 128, 16, 16)]
CASES = ("q_sample", "q_sample_seeded", "reverse_step", "reverse_step_given_noise", "groupnorm_temb_silu")


def _case(name: str, shape, device):
    """(extension fn, reference fn, bytes the fused op must move) for one case."""
    ops = torch.ops.ddpm_fast
    table = NoiseSchedule.linear(1000).table(device)
    seed = torch.tensor(1234, dtype=torch.int64, device=device)
    x, m = torch.randn(shape, device=device), torch.randn(shape, device=device)
    t = torch.randint(1, 1000, (shape[0],), device=device)
    nbytes = x.numel() * 4
    if name == "q_sample":
        z = torch.randn(shape, device=device)
        return (lambda: ops.q_sample(x, t, table, z), lambda: reference.q_sample(x, t, table, z), 3 * nbytes)
    if name == "q_sample_seeded":
        return (lambda: ops.q_sample_seeded(x, t, table, seed, 0, 2),
                lambda: reference.q_sample_seeded(x, t, table, seed, 0, 2), 3 * nbytes)
    if name == "reverse_step":
        args = (x, m, t, table, None, seed, 0, 0, 0, True, 1.0, None)
        return lambda: ops.reverse_step(*args), lambda: reference.reverse_step(*args), 3 * nbytes
    if name == "reverse_step_given_noise":
        args = (x, m, t, table, torch.randn(shape, device=device), None, 0, 0, 0, True, 1.0, None)
        return lambda: ops.reverse_step(*args), lambda: reference.reverse_step(*args), 4 * nbytes
    C = shape[1]
    w, b = torch.randn(C, device=device), torch.randn(C, device=device)
    temb = torch.randn(shape[0], C, device=device)
    args = (x, w, b, temb, min(32, C), 1e-5, 1, True)
    return (lambda: ops.groupnorm_temb_silu(*args), lambda: reference.groupnorm_temb_silu(*args), 2 * nbytes)


def _info(device) -> dict:
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


@pytest.mark.skipif(not extension.available(), reason="C++ extension not built")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES)
def test_cpp_vs_reference(benchmark, speedup_report, case, shape):
    device = torch.device("cpu")
    ext, ref, _ = _case(case, shape, device)
    torch.testing.assert_close(ext(), ref(), rtol=1e-4, atol=1e-4)  # same thing being timed
    ext_ms, ref_ms = interleaved_ms([ext, ref], device, rounds=3)
    benchmark.pedantic(ext, rounds=5, warmup_rounds=1, iterations=1)
    ratio = ref_ms / ext_ms
    benchmark.extra_info.update(_info(device), op=case, shape=list(shape), extension_ms=round(ext_ms, 3),
                                reference_ms=round(ref_ms, 3), speedup_vs_reference=round(ratio, 2))
    speedup_report(f"cpp  {case:<26} {'x'.join(map(str, shape)):>12}: extension {ext_ms:9.2f} ms, "
                   f"reference {ref_ms:9.2f} ms, speedup {ratio:6.1f}x")


@pytest.mark.skipif(not (extension.available() and extension.has_cuda_kernels() and torch.cuda.is_available()),
                    reason="needs the CUDA extension and a GPU")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES)
def test_cuda_vs_reference(benchmark, speedup_report, case, shape):
    device = torch.device("cuda")
    ext, ref, nbytes = _case(case, shape, device)
    torch.testing.assert_close(ext(), ref(), rtol=1e-4, atol=1e-4)
    ext_ms, ref_ms = interleaved_ms([ext, ref], device, rounds=20)
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = statistics.median(once_ms(lambda: dst.copy_(src), device) for _ in range(20))
    benchmark.pedantic(ext, setup=lambda: sync(device), rounds=50, warmup_rounds=5, iterations=1)
    frac = copy_ms / ext_ms   # the copy moves the same bytes (read + write)
    benchmark.extra_info.update(_info(device), op=case, shape=list(shape), extension_ms=round(ext_ms, 4),
                                reference_ms=round(ref_ms, 4), speedup_vs_reference=round(ref_ms / ext_ms, 2),
                                bandwidth_fraction_of_copy=round(frac, 3))
    speedup_report(f"cuda {case:<26} {'x'.join(map(str, shape)):>12}: extension {ext_ms:8.3f} ms, "
                   f"reference {ref_ms:8.3f} ms, speedup {ref_ms / ext_ms:6.1f}x, {100 * frac:5.1f}% of copy")
