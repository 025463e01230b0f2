"""The Triton backend beyond the ops contract (tests/test_ops_contract.py checks every op against
the float64 reference on every backend): reverse_step_out in place, the out-variants into a strided
out, chunk invariance, the front dispatching to it, and on a GPU, Triton against the CUDA extension
at full size. On CPU through TRITON_INTERPRET=1."""
import pytest
import torch

from ddpm_fast.ops import dispatch
from ddpm_fast.schedule import NoiseSchedule

pytestmark = pytest.mark.triton

from triton_env import DEV, HAS_CUDA, triton_ops_or_skip  # noqa: E402

ops = triton_ops_or_skip()
SEED = torch.tensor(0x0123456789ABCDEF, dtype=torch.int64, device=DEV)


@pytest.fixture(scope="module")
def table():
    return NoiseSchedule.linear(100).table(DEV)


def _t(B):
    return torch.randint(0, 100, (B,), device=DEV).index_fill_(0, torch.tensor([0], device=DEV), 0)


def _rand(shape, dtype):
    return torch.randn(shape, device=DEV).to(dtype)


def test_reverse_step_given_noise_and_out(table):
    x, m, nz = (_rand((2, 3, 8, 8), torch.float32) for _ in range(3))
    t = _t(2)
    ref = ops.reverse_step(x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, None)
    out = x.clone()
    ops.reverse_step_out(out, m, t, table, None, SEED, 0, 0, 0, True, 1.0, None, out)   # in place
    assert torch.equal(out, ref)
    res = dispatch.implementation("reverse_step_out", "triton", DEV)(
        x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, None, torch.empty_like(x))
    assert torch.equal(res, ref)


@pytest.mark.parametrize("op", ["reverse_step", "ddim_step"])
def test_step_out_into_a_strided_out(table, op):
    """<op>_out into a non-contiguous out (written through a temporary) equals <op>."""
    x, m = _rand((2, 3, 8, 8), torch.float32), _rand((2, 3, 8, 8), torch.float32)
    t = torch.tensor([60, 9], device=DEV)
    if op == "reverse_step":
        args = (x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, None)
    else:   # eta 0.5: the seeded noise path too; t_prev -1: the final step
        args = (x, m, t, torch.tensor([50, -1], device=DEV), table, None, SEED, 0, 0.5, 0, True, 1.0, 1.0, None)
    want = getattr(ops, op)(*args)
    strided = torch.empty(2, 3, 8, 16, device=DEV)[..., ::2]
    getattr(ops, op + "_out")(*args, strided)
    assert torch.equal(strided, want)


def test_chunk_invariance(table):
    """A batch split into chunks with sample offsets gives the same result as the whole batch."""
    x, m = _rand((4, 3, 5, 5), torch.float32), _rand((4, 3, 5, 5), torch.float32)
    t = torch.tensor([9, 8, 7, 6], device=DEV)
    full = ops.reverse_step(x, m, t, table, None, SEED, 100, 0, 0, True, 1.0, None)
    parts = [ops.reverse_step(x[i:i + 2], m[i:i + 2], t[i:i + 2], table, None, SEED, 100 + i, 0, 0, True, 1.0, None)
             for i in (0, 2)]
    assert torch.equal(full, torch.cat(parts))
    xt, eps = ops.q_sample_seeded(x, t, table, SEED, 0, 0)
    xt2, eps2 = ops.q_sample_seeded(x[1:], t[1:], table, SEED, 1, 0)
    assert torch.equal(xt[1:], xt2) and torch.equal(eps[1:], eps2)


def test_front_dispatches_to_triton():
    import ddpm_fast.ops as O
    sched = NoiseSchedule.linear(100)
    x, m = _rand((2, 3, 4, 4), torch.float32), _rand((2, 3, 4, 4), torch.float32)
    a = O.reverse_step(x, m, 5, sched, seed=3, backend="triton")
    b = O.reverse_step(x, m, 5, sched, seed=3, backend="reference")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert "triton" in O.backends() and O.backends()["triton"] == "available"


# --- GPU only: full size and Triton vs the CUDA extension ---------------------------------------

def _cuda_ext_reason():
    if not HAS_CUDA:
        return "needs a CUDA device"
    return dispatch.unavailable_reason("cuda", "cuda")


@pytest.mark.cuda
@pytest.mark.extension
@pytest.mark.skipif(_cuda_ext_reason() is not None, reason=f"CUDA extension unavailable: {_cuda_ext_reason()}")
@pytest.mark.parametrize("op", ["reverse_step", "q_sample_seeded", "ddim_step", "philox_uniform"])
def test_triton_vs_cuda_extension(op, table):
    tri = dispatch.implementation(op, "triton", DEV)
    cud = dispatch.implementation(op, "cuda", DEV)
    x, m = _rand((256, 3, 32, 32), torch.float32), _rand((256, 3, 32, 32), torch.float32)
    t = torch.randint(1, 100, (256,), device=DEV)
    if op == "reverse_step":
        args = (x, m, t, table, None, SEED, 0, 0, 0, True, 1.0, None)
    elif op == "q_sample_seeded":
        args = (x, t, table, SEED, 0, 2)
    elif op == "ddim_step":
        args = (x, m, t, t - 1, table, None, SEED, 0, 0.5, 0, True, 1.0, 1.0, None)
    else:
        args = (SEED, t, 256, 3 * 32 * 32, 0, 1)
    a, b = tri(*args), cud(*args)
    if op == "philox_uniform":
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_grid_puts_the_batch_on_axis_0():
    """CUDA grid axes 1 and 2 take at most 65535 programs: every element-wise launch is a 1-D grid
    of (sample, block) programs, so a batch of 70000 is a valid launch (_common.py)."""
    from ddpm_fast.ops.triton._common import elementwise_grid
    assert elementwise_grid(70000, 3000)({"BLOCK": 1024}) == (70000 * 3,)


def test_launch_runs_on_the_tensors_gpu_not_the_current_one(monkeypatch):
    """Triton launches on the current device: with cuda:0 current and the data on cuda:1 the
    launcher must make cuda:1 current around the launch (_common.py device_guard). With fakes for
    the device context and the kernel, so it runs without a GPU (2 GPUs: the sampler test)."""
    import contextlib

    from ddpm_fast.ops.triton import _common
    current = ["cuda:0"]
    seen = []

    @contextlib.contextmanager
    def fake_device(dev):
        before, current[0] = current[0], str(dev)
        try:
            yield
        finally:
            current[0] = before

    class FakeKernel:
        def __getitem__(self, grid):
            return lambda *args, **kw: seen.append(current[0])

    class OnSecondGpu:
        device = torch.device("cuda", 1)

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(_common, "USE_TRITON_OP", False)
    monkeypatch.setattr(_common, "AUTOTUNE", False)
    _common.launch(FakeKernel(), None, lambda meta: (1,), (OnSecondGpu(),), {})
    assert seen == ["cuda:1"] and current == ["cuda:0"]
    seen.clear()
    _common.launch(FakeKernel(), None, lambda meta: (1,), (torch.zeros(1),), {})   # CPU data: no guard
    assert seen == ["cuda:0"]
