"""The C++/CUDA extension's ops (backend "cpp" on CPU tensors, "cuda" on CUDA tensors) against the
reference backend: fresh random inputs, odd sizes, batch 1, non-contiguous views, three dtypes.

Tolerance (flash-attention style): the error of the extension against a float64 evaluation of
the reference is at most max(floor, 2 x the error of the reference backend run at the same
precision); floor = 1e-6 x scale for float32 (the contract's "<= 1e-6 relative") and half an ulp
at scale for float16/bfloat16, where scale = the largest magnitude among the output and the data
inputs (a step's output can be much smaller than the terms it is summed from). Noise: uniforms bitwise equal, normals within 1e-6.
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
SHAPES = [(1, 1, 1, 1), (3, 5, 7, 9), (1, 4, 6, 6)]
FLOOR = {torch.float32: 1e-6, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}

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


def _timesteps(B, T, device, dtype=torch.int64):
    t = torch.randint(0, T, (B,), device=device, dtype=dtype)
    t[0] = 0 if B > 1 else t[0]       # t = 0 (no noise) always in a batch
    if B > 2:
        t[1] = T - 1
    return t


def _f64(args):
    return [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


def _check_close(ours, fn_ref, args, dtype):
    """ours vs reference in float64; bound: max(floor * scale, 2 x the reference's own error)."""
    ref64 = fn_ref(*_f64(args))
    ref_lo = fn_ref(*args)
    ours, ref64, ref_lo = (o if isinstance(o, (tuple, list)) else (o,) for o in (ours, ref64, ref_lo))
    for o, r64, rlo in zip(ours, ref64, ref_lo):
        assert o.dtype == dtype and o.shape == r64.shape
        scale = max([r64.abs().max().item(), 1e-30] + [a.abs().max().item() for a in args if isinstance(
            a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64 and a.numel()])
        err = (o.double() - r64).abs().max().item() if o.numel() else 0.0
        err_ref = (rlo.double() - r64).abs().max().item() if o.numel() else 0.0
        bound = max(FLOOR[dtype] * scale, 2 * err_ref)
        assert err <= bound, f"error {err:.3g} > bound {bound:.3g} (reference's own error {err_ref:.3g})"


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,numel,offset,stream", [(1, 1, 0, 0), (3, 37, 5, 1), (2, 4099, 2**32 - 1, 2)])
def test_philox_streams_match_reference(device, batch, numel, offset, stream):
    seed = _seed(device, -7)
    for t in (torch.tensor(17, device=device), torch.randint(0, 1000, (batch,), device=device)):
        u = ops.philox_uniform(seed, t, batch, numel, offset, stream)
        assert torch.equal(u, reference.philox_uniform_op(seed, t, batch, numel, offset, stream))
        z = ops.philox_normal(seed, t, batch, numel, offset, stream)
        torch.testing.assert_close(z, reference.philox_normal_op(seed, t, batch, numel, offset, stream),
                                   rtol=1e-6, atol=1e-6)


# --- element-wise ops --------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(256, 3, 32, 32)])
def test_q_sample(device, dtype, shape):
    table = _table(device)
    x0, noise = _data(shape, dtype, device, noncontig=True), _data(shape, dtype, device)
    args = (x0, _timesteps(shape[0], 1000, device), table, noise)
    _check_close(ops.q_sample(*args), reference.q_sample, args, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("target", [0, 1, 2])
def test_q_sample_seeded(device, dtype, shape, target):
    x0 = _data(shape, dtype, device, noncontig=target == 2)
    args = (x0, _timesteps(shape[0], 1000, device, torch.int32), _table(device), _seed(device), 3, target)
    _check_close(ops.q_sample_seeded(*args), reference.q_sample_seeded, args, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pred,var,clip", [(0, 0, True), (0, 1, False), (1, 0, True), (2, 1, True), (2, 0, False)])
def test_reverse_step_seeded(device, dtype, shape, pred, var, clip):
    x, m = _data(shape, dtype, device), _data(shape, dtype, device, noncontig=True)
    args = (x, m, _timesteps(shape[0], 1000, device), _table(device), None, _seed(device), 11, pred, var, clip, 1.0)
    _check_close(ops.reverse_step(*args), reference.reverse_step, args, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (256, 3, 32, 32)])
def test_reverse_step_given_noise_mixed_dtypes(device, dtype, shape):
    """model_out and noise may have another float dtype than x_t (math in float32)."""
    x = _data(shape, torch.float32, device)
    m, z = _data(shape, dtype, device), _data(shape, dtype, device, noncontig=True)
    t = torch.tensor(421, device=device)
    args = (x, m, t, _table(device), z, None, 0, 0, 0, True, 1.0)
    _check_close(ops.reverse_step(*args), reference.reverse_step, args, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reverse_step_out(device, dtype):
    shape = (4, 3, 8, 8)
    x, m = _data(shape, dtype, device), _data(shape, dtype, device)
    args = (x, m, torch.tensor(500, device=device), _table(device), None, _seed(device), 0, 0, 0, True, 1.0)
    want = ops.reverse_step(*args)
    out = torch.empty_like(x)
    ops.reverse_step_out(*args, out)
    assert torch.equal(out, want)
    strided = torch.empty(*shape[:-1], 2 * shape[-1], dtype=dtype, device=device)[..., ::2]
    ops.reverse_step_out(*args, strided)
    assert torch.equal(strided, want)
    x_in_place = x.clone()                                   # out = x_t itself (the sampler's buffer)
    ops.reverse_step_out(x_in_place, *args[1:], x_in_place)
    assert torch.equal(x_in_place, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pred,eta,clip,t_prev_kind", [(0, 0.0, False, "table"), (0, 1.0, True, "final"),
                                                       (1, 0.5, True, "table"), (2, 0.0, True, "final"),
                                                       (2, 0.3, False, "mixed")])
def test_ddim_step(device, dtype, shape, pred, eta, clip, t_prev_kind):
    B = shape[0]
    t = torch.randint(50, 1000, (B,), device=device)
    t_prev = {"table": t - 50, "final": torch.full_like(t, -1),
              "mixed": torch.where(torch.arange(B, device=device) % 2 == 0, t - 50, -1)}[t_prev_kind]
    x, m = _data(shape, dtype, device, noncontig=True), _data(shape, dtype, device)
    args = (x, m, t, t_prev, _table(device), None, _seed(device) if eta > 0 else None, 2, eta, pred, clip, 1.0, 0.9991)
    _check_close(ops.ddim_step(*args), reference.ddim_step, args, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7, 9), (2, 6, 4, 4, 3)])
def test_temb_add(device, dtype, shape):
    h = _data(shape, dtype, device, noncontig=True)
    temb = _data(shape[:2], dtype, device)
    _check_close(ops.temb_add(h, temb), reference.temb_add, (h, temb), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups", [((1, 1, 1, 2), 1), ((3, 6, 7, 9), 3), ((1, 8, 6, 6), 4),
                                          ((4, 64, 16, 16), 32), ((2, 4, 3000), 2)])
@pytest.mark.parametrize("mode,silu", [(0, True), (1, True), (2, True), (1, False)])
def test_groupnorm_temb_silu(device, dtype, shape, groups, mode, silu):
    x = _data(shape, dtype, device, noncontig=mode == 2) * 3 + 1
    w, b = _data(shape[1:2], dtype, device), _data(shape[1:2], dtype, device)
    temb = _data(shape[:2], dtype, device) if mode else None
    args = (x, w, b, temb, groups, 1e-5, mode, silu)
    _check_close(ops.groupnorm_temb_silu(*args), reference.groupnorm_temb_silu, args, dtype)


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
    full = ops.reverse_step(x, m, t, table, None, seed, 10, 0, 0, True, 1.0)
    halves = [ops.reverse_step(x[i:i + 3], m[i:i + 3], t[i:i + 3], table, None, seed, 10 + i, 0, 0, True, 1.0)
              for i in (0, 3)]
    assert torch.equal(full, torch.cat(halves))
    xt, eps = ops.q_sample_seeded(x, t, table, seed, 0, 0)
    parts = [ops.q_sample_seeded(x[i:i + 3], t[i:i + 3], table, seed, i, 0) for i in (0, 3)]
    assert torch.equal(xt, torch.cat([p[0] for p in parts])) and torch.equal(eps, torch.cat([p[1] for p in parts]))
    one = ops.reverse_step(x[4:5], m[4:5], t[4:5], table, None, seed, 14, 0, 0, True, 1.0)
    assert torch.equal(one, full[4:5])                        # sample 4 at batch size 1


def test_no_noise_at_t0():
    x, m = torch.randn(2, 8), torch.randn(2, 8)
    table, t = _table("cpu"), torch.tensor(0)
    a = ops.reverse_step(x, m, t, table, None, _seed("cpu", 1), 0, 0, 0, False, 1.0)
    b = ops.reverse_step(x, m, t, table, None, _seed("cpu", 2), 0, 0, 0, False, 1.0)
    assert torch.equal(a, b)


# --- bad input: clear errors from the op --------------------------------------------------------

def _step_args(**over):
    x = torch.randn(3, 4, 5)
    args = dict(x_t=x, model_out=torch.randn(3, 4, 5), t=torch.tensor(5), table=_table("cpu"), noise=None,
                seed=_seed("cpu"), sample_offset=0, prediction_type=0, variance_type=0, clip=True, clip_range=1.0)
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
    (dict(seed=torch.tensor(1, dtype=torch.int32)), "seed must be one int64 value"),
    (dict(seed=None), "needs noise or seed"),
    (dict(noise=torch.randn(3, 4, 5)), "not both"),
    (dict(prediction_type=3), "prediction_type must be in"),
    (dict(variance_type=-1), "variance_type must be in"),
    (dict(sample_offset=-1), "sample_offset must be >= 0"),
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
        ops.ddim_step(x, x, torch.tensor(5), torch.tensor(1000), table, None, None, 0, 0.0, 0, True, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="stochastic step needs noise or seed"):
        ops.ddim_step(x, x, torch.tensor(5), torch.tensor(1), table, None, None, 0, 0.5, 0, True, 1.0, 1.0)
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


@requires_cuda
def test_wrong_device_is_a_clear_error():
    x = torch.randn(2, 4, 3, 3, device="cuda")
    with pytest.raises(RuntimeError, match="table is on cpu but the data is on cuda"):
        ops.q_sample(x, torch.tensor(1, device="cuda"), _table("cpu"), x)
    with pytest.raises(RuntimeError, match="t is on cpu"):
        ops.q_sample(x, torch.tensor(1), _table("cuda"), x)


@requires_cuda
def test_cuda_out_of_range_timestep_gives_nan():
    """On CUDA the range is not checked on the host (no sync): the kernel writes NaN instead."""
    x = torch.randn(2, 8, device="cuda")
    y = ops.q_sample(x, torch.tensor([1, 1000], device="cuda"), _table("cuda"), x)
    assert y[0].isfinite().all() and y[1].isnan().all()


# --- torch.library / torch.compile --------------------------------------------------------------

def _opcheck_samples(device):
    table, seed = _table(device), _seed(device)
    x = torch.randn(2, 4, 3, 5, device=device)
    m = torch.randn(2, 4, 3, 5, device=device).to(torch.bfloat16)
    t = torch.tensor([3, 0], device=device)
    w, b, temb = torch.randn(4, device=device), torch.randn(4, device=device), torch.randn(2, 4, device=device)
    return [
        (ops._philox4x32_10, (torch.randint(0, 2**32, (3, 4)), torch.tensor([1, 2])), device == "cpu"),
        (ops.philox_normal, (seed, t, 2, 9, 1, 0), True),
        (ops.philox_uniform, (seed, torch.tensor(5, device=device), 2, 9, 1, 2), True),
        (ops.q_sample, (x, t, table, torch.randn_like(x)), True),
        (ops.q_sample_seeded, (x.half(), t, table, seed, 0, 2), True),
        (ops.reverse_step, (x, m, t, table, None, seed, 0, 0, 0, True, 1.0), True),
        (ops.reverse_step, (x[..., ::2], x[..., ::2], t, table, torch.randn(2, 4, 3, 3, device=device), None, 0,
                            2, 1, False, 1.0), True),
        (ops.reverse_step_out, (x, m, t, table, None, seed, 0, 1, 0, True, 1.0, torch.empty_like(x)), True),
        (ops.ddim_step, (x, m, t, torch.tensor([-1, 0], device=device), table, None, seed, 0, 0.5, 0, True, 1.0,
                         1.0), True),
        (ops.temb_add, (x, temb), True),
        (ops.groupnorm_temb_silu, (x, w, b, temb, 2, 1e-5, 1, True), True),
        (ops.groupnorm_temb_silu, (x.bfloat16(), w, b, None, 4, 1e-6, 0, False), True),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    samples = [(op, args) for op, args, ok in _opcheck_samples(device) if ok]
    assert {op._qualified_op_name.split("::")[1] for op, _ in samples} >= set(extension.OPS) - (
        set() if device == "cpu" else {"_philox4x32_10"})
    for op, args in samples:
        torch.library.opcheck(op, args)


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
        x_prev = step(x, h, t, table, None, seed, 0, 0, 0, True, 1.0)
        ops.reverse_step_out(x_prev, h, t, table, None, seed, 0, 0, 0, True, 1.0, buf)
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
