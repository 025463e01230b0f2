"""The C++/CUDA extension's ops (backend "cpp" on CPU tensors, "cuda" on CUDA tensors) beyond the
ops contract (tests/test_ops_contract.py checks every op against the float64 reference on every
backend): Philox known answers, reverse_step_out in place, gradients, chunk invariance, the C++
argument checks of direct ``torch.ops.ddpm_fast`` calls, torch.compile tracing.
CUDA cases are the same tests with device "cuda"; they skip without a GPU.
"""
from __future__ import annotations

import pytest
import torch

from ddpm_fast.ops import extension, reference
from ddpm_fast.schedule import NoiseSchedule

from gpu_gates import requires_cuda_kernels as requires_cuda  # a device and the kernels built for it

pytestmark = [pytest.mark.extension,
              pytest.mark.skipif(not extension.available(), reason="C++ extension not built")]

DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

ops = torch.ops.ddpm_fast if extension.available() else None


def _table(device, T=1000):
    return NoiseSchedule.linear(T).table(device)


def _seed(device, value=0x1234_5678_9ABC_DEF0):
    return torch.tensor(value, dtype=torch.int64, device=device)


def _data(shape, dtype, device, noncontig=False):
    """Random data of ``shape``; with noncontig, a strided view (every other column of a wider tensor)."""
    if noncontig:
        wide = torch.randn(*shape[:-1], 2 * shape[-1], device=device).to(dtype)
        return wide[..., ::2]
    return torch.randn(shape, device=device).to(dtype)


# --- noise -----------------------------------------------------------------------------------

def test_philox_kat_vectors(request):
    path = request.path.parent / "data" / "philox4x32_10_kat.txt"
    rows = [line.split() for line in path.read_text().splitlines() if line.startswith("philox4x32 10")]
    assert rows
    for r in rows:
        vals = [int(v, 16) for v in r[2:]]
        ctr, key, want = vals[0:4], vals[4:6], vals[6:10]
        got = ops._philox4x32_10(torch.tensor([ctr], dtype=torch.int64), torch.tensor(key, dtype=torch.int64))
        assert got[0].tolist() == want


# --- element-wise ops --------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["reverse_step", "ddim_step"])
def test_step_out(device, dtype, op):
    """<op>_out equals <op> whether out is contiguous, a strided view (written through a
    temporary) or x_t itself (in place)."""
    shape = (4, 3, 8, 8)
    x, m = _data(shape, dtype, device), _data(shape, dtype, device)
    t, table, seed = torch.tensor(500, device=device), _table(device), _seed(device)
    if op == "reverse_step":
        args = (x, m, t, table, None, seed, 0, 0, 0, True, 1.0, None)
    else:   # eta 0.5: the seeded noise path too
        args = (x, m, t, t - 20, table, None, seed, 0, 0.5, 0, True, 1.0, 1.0, None)
    functional, out_variant = getattr(ops, op), getattr(ops, op + "_out")
    want = functional(*args)
    out = torch.empty_like(x)
    out_variant(*args, out)
    assert torch.equal(out, want)
    strided = torch.empty(*shape[:-1], 2 * shape[-1], dtype=dtype, device=device)[..., ::2]
    out_variant(*args, strided)
    assert torch.equal(strided, want)
    x_in_place = x.clone()                                   # out = x_t itself (the sampler's buffer)
    out_variant(x_in_place, *args[1:], x_in_place)
    assert torch.equal(x_in_place, want)


def test_groupnorm_single_element_group():
    """1x1x1x1: F.group_norm refuses a one-element group; the kernel normalises it to 0 (-> bias)."""
    x, w, b = torch.randn(1, 1, 1, 1), torch.randn(1), torch.randn(1)
    y = ops.groupnorm_temb_silu(x, w, b, None, 1, 1e-5, 0, False)
    torch.testing.assert_close(y.reshape(1), b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,silu", [(0, True), (1, True), (2, True), (2, False)])
def test_groupnorm_temb_silu_and_temb_add_gradients(device, mode, silu):
    """The UNet trains through these ops: gradients match autograd through the reference (fp64)."""
    x = torch.randn(2, 6, 5, 4, device=device)
    w, b = torch.randn(6, device=device), torch.randn(6, device=device)
    temb = torch.randn(2, 6, device=device) if mode else None
    shift = torch.randn(2, 6, device=device)
    g = torch.randn_like(x)

    def grads(gn, add, dtype):
        leaves = [a.to(dtype).requires_grad_() if a is not None else None for a in (x, w, b, temb, shift)]
        y = add(gn(*leaves[:4], 3, 1e-5, mode, silu), leaves[4])
        return torch.autograd.grad((y * g.to(dtype)).sum(), [a for a in leaves if a is not None])

    ours = grads(ops.groupnorm_temb_silu, ops.temb_add, torch.float32)
    want = grads(reference.groupnorm_temb_silu, reference.temb_add, torch.float64)
    for o, r in zip(ours, want):
        torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-4)


# --- reproducibility ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_chunk_invariance(device):
    """A batch equals its halves run with the right global sample offsets (bitwise)."""
    B, table, seed = 6, _table(device), _seed(device)
    x, m = torch.randn(B, 3, 5, 5, device=device), torch.randn(B, 3, 5, 5, device=device)
    t = torch.randint(0, 1000, (B,), device=device)
    full = ops.reverse_step(x, m, t, table, None, seed, 10, 0, 0, True, 1.0, None)
    halves = [ops.reverse_step(x[i:i + 3], m[i:i + 3], t[i:i + 3], table, None, seed, 10 + i, 0, 0, True, 1.0, None)
              for i in (0, 3)]
    assert torch.equal(full, torch.cat(halves))
    xt, eps = ops.q_sample_seeded(x, t, table, seed, 0, 0)
    parts = [ops.q_sample_seeded(x[i:i + 3], t[i:i + 3], table, seed, i, 0) for i in (0, 3)]
    assert torch.equal(xt, torch.cat([p[0] for p in parts])) and torch.equal(eps, torch.cat([p[1] for p in parts]))
    one = ops.reverse_step(x[4:5], m[4:5], t[4:5], table, None, seed, 14, 0, 0, True, 1.0, None)
    assert torch.equal(one, full[4:5])                        # sample 4 at batch size 1


def test_no_noise_at_t0():
    x, m = torch.randn(2, 8), torch.randn(2, 8)
    table, t = _table("cpu"), torch.tensor(0)
    a = ops.reverse_step(x, m, t, table, None, _seed("cpu", 1), 0, 0, 0, False, 1.0, None)
    b = ops.reverse_step(x, m, t, table, None, _seed("cpu", 2), 0, 0, 0, False, 1.0, None)
    assert torch.equal(a, b)


# --- bad input: clear errors from the op --------------------------------------------------------

def _step_args(**over):
    x = torch.randn(3, 4, 5)
    args = dict(x_t=x, model_out=torch.randn(3, 4, 5), t=torch.tensor(5), table=_table("cpu"), noise=None,
                seed=_seed("cpu"), sample_offset=0, prediction_type=0, variance_type=0, clip=True, clip_range=1.0,
                guidance_scale=None)
    args.update(over)
    return list(args.values())


@pytest.mark.parametrize("over,match", [
    (dict(x_t=torch.randn(3, 4, 5, dtype=torch.float64)), "float32, float16 or bfloat16, got Double"),
    (dict(x_t=torch.ones(3, 4, 5, dtype=torch.int32)), "float32, float16 or bfloat16"),
    (dict(model_out=torch.randn(3, 4, 6)), "model_out has shape"),
    (dict(t=torch.tensor(1000)), r"t = 1000 is out of range \[0, 1000\)"),
    (dict(t=torch.tensor([1, 2, -1])), r"t = -1 is out of range"),
    (dict(t=torch.tensor(5.0)), "t must be int32 or int64"),
    (dict(t=torch.tensor([1, 2])), r"t must have shape \[\] or \[3\]"),
    (dict(table=torch.zeros(10, 15, dtype=torch.float64)), r"table must be float64 \[T, 16\]"),
    (dict(table=torch.zeros(10, 16)), r"table must be float64"),
    (dict(seed=torch.tensor(1, dtype=torch.int32)), r"seed must be int64 \[\], \[1\] or \[2\]"),
    (dict(seed=None), "needs noise or seed"),
    (dict(noise=torch.randn(3, 4, 5)), "not both"),
    (dict(prediction_type=3), "prediction_type must be in"),
    (dict(variance_type=-1), "variance_type must be in"),
    (dict(sample_offset=-1), "sample_offset must be an int >= 0"),
    (dict(sample_offset=2 ** 32 - 2), r"sample_offset \+ batch must be <= 2\*\*32"),
    (dict(clip_range=0.0), r"clip_range must be a number in \(0, inf\)"),
    (dict(clip_range=float("nan")), r"clip_range must be a number in \(0, inf\)"),
])
def test_reverse_step_bad_input(over, match):
    with pytest.raises(RuntimeError, match=match):
        ops.reverse_step(*_step_args(**over))


def test_other_ops_bad_input():
    x, table = torch.randn(2, 4, 3, 3), _table("cpu")
    with pytest.raises(RuntimeError, match="noise has shape"):
        ops.q_sample(x, torch.tensor(1), table, torch.randn(2, 4, 3))
    with pytest.raises(RuntimeError, match="out of range"):
        ops.q_sample_seeded(x, torch.tensor([0, 1000]), table, _seed("cpu"), 0, 0)
    with pytest.raises(RuntimeError, match="target_type must be in"):
        ops.q_sample_seeded(x, torch.tensor(1), table, _seed("cpu"), 0, 5)
    with pytest.raises(RuntimeError, match=r"t_prev = 1000 is out of range"):
        ops.ddim_step(x, x, torch.tensor(5), torch.tensor(1000), table, None, None, 0, 0.0, 0, True, 1.0, 1.0, None)
    for eta in (float("inf"), float("nan"), -0.5):
        with pytest.raises(RuntimeError, match=r"eta must be a finite number in \[0, inf\)"):
            ops.ddim_step(x, x, torch.tensor(5), torch.tensor(1), table, None, _seed("cpu"), 0, eta, 0, True, 1.0, 1.0, None)
    with pytest.raises(RuntimeError, match=r"final_alpha_bar must be a number in \(0, 1\]"):
        ops.ddim_step(x, x, torch.tensor(5), torch.tensor(1), table, None, None, 0, 0.0, 0, True, 1.0, 2.0, None)
    with pytest.raises(RuntimeError, match=r"sample_offset \+ batch must be <= 2\*\*32"):
        ops.philox_normal(_seed("cpu"), torch.tensor(0), 2, 3, 2 ** 32 - 1, 0)
    with pytest.raises(RuntimeError, match="stochastic step needs noise or seed"):
        ops.ddim_step(x, x, torch.tensor(5), torch.tensor(1), table, None, None, 0, 0.5, 0, True, 1.0, 1.0, None)
    with pytest.raises(RuntimeError, match=r"temb must have shape \[B, C\]"):
        ops.temb_add(x, torch.randn(2, 3))
    w = torch.ones(4)
    with pytest.raises(RuntimeError, match="num_groups must be a positive divisor of C=4"):
        ops.groupnorm_temb_silu(x, w, w, None, 3, 1e-5, 0, True)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[4\]"):
        ops.groupnorm_temb_silu(x, torch.ones(3), w, None, 2, 1e-5, 0, True)
    with pytest.raises(RuntimeError, match="needs a temb tensor"):
        ops.groupnorm_temb_silu(x, w, w, None, 2, 1e-5, 1, True)
    with pytest.raises(RuntimeError, match="out must be"):
        ops.reverse_step_out(*_step_args(x_t=x, model_out=x), torch.empty(2, 4, 3, 3, dtype=torch.float16))


@pytest.mark.cuda
@requires_cuda
def test_wrong_device_is_a_clear_error():
    x = torch.randn(2, 4, 3, 3, device="cuda")
    with pytest.raises(RuntimeError, match="table is on cpu but the data is on cuda"):
        ops.q_sample(x, torch.tensor(1, device="cuda"), _table("cpu"), x)
    with pytest.raises(RuntimeError, match="t is on cpu"):
        ops.q_sample(x, torch.tensor(1), _table("cuda"), x)



@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("batch,numel", [(1, 1), (5, 1), (3, 3), (7, 5), (2, 1023), (3, 1025), (2, 4096), (600, 6)])
def test_cuda_philox_rows_of_any_length(batch, numel):
    """philox_kernel stages a block's counters in shared memory and stores the contiguous range
    they cover with 16-byte accesses: rows shorter than a quad, rows that straddle blocks and
    blocks that straddle rows give the reference's uniforms bitwise, and its normals within the
    CUDA bound of docs/ops_contract.md (5 * 2**-24 relative)."""
    t = torch.tensor([7 * i % 1000 for i in range(batch)])
    args = (batch, numel, 11, 1)
    got = ops.philox_uniform(_seed("cuda"), t.cuda(), *args).cpu()
    assert torch.equal(got, reference.philox_uniform(_seed("cpu"), t, *args))
    z = ops.philox_normal(_seed("cuda"), t.cuda(), *args).cpu().double()
    want = ops.philox_normal(_seed("cpu"), t, *args).double()   # correctly rounded (test_cpu_noise.py)
    assert ((z - want).abs() <= 6 * 2.0 ** -24 * want.abs()).all()


# (B, C, spatial, G, storage offset): vector path with one and with several blocks per group
# (B * G small), the one-element-at-a-time path (HW % 8 != 0, or x not 16-byte aligned)
_GN_CASES = [((2, 64, (32, 32), 32, 0)), ((1, 8, (128, 96), 2, 0)), ((1, 4, (100, 93), 2, 0)),
             ((3, 6, (16, 8), 3, 1)), ((1, 1, (1, 1), 1, 0)), ((5, 12, (7, 5), 4, 0))]


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(_GN_CASES)))
def test_cuda_groupnorm_two_phase_matches_closed_form(dtype, case):
    """csrc/cuda/groupnorm_temb_silu.cu: statistics split across blocks, per-row coefficients,
    16-byte element-wise pass; against the float64 closed form, every temb mode."""
    from groupnorm_closed_form import closed_form
    B, C, spatial, G, offset = _GN_CASES[case]
    mode, silu = case % 3, case % 2 == 0
    g = torch.Generator().manual_seed(case)
    n = B * C * spatial[0] * spatial[1]
    x = (torch.randn(n + offset, generator=g, dtype=torch.float64) * 2 + 3)[offset:].view(B, C, *spatial).to(dtype)
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    b = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    temb = torch.randn(B, C, generator=g, dtype=torch.float64).to(dtype)
    xc = torch.empty(n + offset, dtype=dtype, device="cuda")[offset:].view(B, C, *spatial).copy_(x)
    got = ops.groupnorm_temb_silu(xc, w.cuda(), b.cuda(), temb.cuda() if mode else None, G, 1e-5, mode, silu)
    want = closed_form(x, w, b, temb, G, 1e-5, mode, silu)
    tol = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 2, 4, 4), (3, 1, 2, 6), (2, 1, 1, 13), (5, 3, 7, 9)])
def test_cuda_octet_kernels_match_the_float64_reference(shape, dtype):
    """The element-wise CUDA kernels take 8 elements per thread (one 16-byte access at 16 bit):
    N % 8 == 0 (vector path), N % 8 == 4 (second Philox counter of an octet partly used), odd N,
    B > 1; seeded noise drawn in-kernel; against the reference evaluated in float64."""
    from ddpm_fast.ops import reference as ref
    x, m = _data(shape, dtype, "cpu"), _data(shape, dtype, "cpu")
    t = torch.tensor([999, 500, 1, 0, 250][:shape[0]])
    t_prev = (t - 100).clamp(min=-1)
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]

    def both(fn, *args):
        cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        f64_args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        got = getattr(ops, fn)(*cuda_args)
        want = getattr(ref, fn)(*f64_args)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            torch.testing.assert_close(g.cpu().double(), w, rtol=tol, atol=tol)

    both("q_sample_seeded", x, t, _table("cpu"), _seed("cpu"), 7, 0)
    both("temb_add", x, m[:, :, 0, 0].contiguous())
    both("reverse_step", x, m, t, _table("cpu"), None, _seed("cpu"), 3, 0, 0, True, 1.0)
    both("ddim_step", x, m, t, t_prev, _table("cpu"), None, _seed("cpu"), 3, 0.7, 0, True, 1.0, 1.0)

# --- torch.library / torch.compile --------------------------------------------------------------

def test_opcheck_raw_generator():
    """The known-answer op, which is not in the ops contract (tests/test_ops_contract.py runs
    opcheck over every contract op)."""
    torch.library.opcheck(ops._philox4x32_10, (torch.randint(0, 2**32, (3, 4)), torch.tensor([1, 2])))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    """A UNet-block-like function and a sampler step calling the ops trace with no graph break.
    backend="aot_eager" checks tracing (dynamo + fake kernels + functionalisation of
    reverse_step_out) without spending a minute in Inductor's C++ compile on a CPU runner."""
    from ddpm_fast.ops.dispatch import implementation
    table, seed = _table(device), _seed(device)
    dev = torch.device(device)
    backend = "cpp" if device == "cpu" else "cuda"
    gn = implementation("groupnorm_temb_silu", backend, dev)
    step = implementation("reverse_step", backend, dev)
    w, b = torch.randn(4, device=device), torch.randn(4, device=device)

    def block_and_step(x, temb, t, buf):
        h = gn(x, w, b, temb, 2, 1e-5, 1, True)
        h = ops.temb_add(h, temb)
        x_prev = step(x, h, t, table, None, seed, 0, 0, 0, True, 1.0, None)
        ops.reverse_step_out(x_prev, h, t, table, None, seed, 0, 0, 0, True, 1.0, None, buf)
        return x_prev

    x, temb = torch.randn(2, 4, 6, 6, device=device), torch.randn(2, 4, device=device)
    t = torch.tensor([7, 0], device=device)
    buf_eager, buf_comp = torch.empty_like(x), torch.empty_like(x)
    eager = block_and_step(x, temb, t, buf_eager)
    compiled = torch.compile(block_and_step, fullgraph=True, backend="aot_eager")(x, temb, t, buf_comp)
    assert torch.equal(eager, compiled)
    assert torch.equal(buf_eager, buf_comp)


def test_dispatcher_backends():
    from ddpm_fast.ops.dispatch import implementation
    assert extension.unavailable_reason("cpp", "cpu") is None
    assert "CPU tensors only" in extension.unavailable_reason("cpp", "cuda")
    why = extension.unavailable_reason("cuda", "cpu")
    assert why is not None if not torch.cuda.is_available() else "CUDA tensors only" in why
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)            # float64 is routed to the reference
    temb = torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(implementation("temb_add", "cpp", x.device)(x, temb), reference.temb_add(x, temb))
