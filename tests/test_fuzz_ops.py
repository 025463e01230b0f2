"""Property-based tests of every public op (ddpm_fast.ops): random shapes (empty and odd
included), layouts (transposed, sliced, expanded, channels_last), dtypes and out-of-range
scalars, on every available backend. Each draw must give either a typed error from the Python
front (ValueError / TypeError, the same on every backend) or, on every backend, a finite result
within the ops contract's tolerance of the reference: never a crash (another exception) and
never a silent NaN. The number of draws comes from the hypothesis profile (tests/conftest.py:
"ci" in `make test`, "fuzz" in `make fuzz`); Triton runs through the interpreter, so it gets a
fifteenth of them."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddpm_fast
from ddpm_fast import ops
from ddpm_fast.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.linear(20)
T = SCHEDULE.T
AVAILABLE = [b for b, s in ddpm_fast.backends().items() if s == "available" and b != "cuda"]
DEV = torch.device("cpu")
# the contract's tolerance (tests/test_extension_ops.py): max(FLOOR * scale, 2 x the error of the
# reference computed in the same dtype, both against the reference in float64)
FLOOR = {torch.float32: 1e-6, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float64: 1e-12}
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["contiguous", "transposed", "sliced", "expanded", "channels_last"]
WEIRD_FLOATS = [math.nan, math.inf, -math.inf, -1.0, 0.0]


def _examples(backend):
    n = settings.default.max_examples
    return max(2, n // 15) if backend == "triton" else n


# --- tensors ------------------------------------------------------------------------------------

def _tensor(shape, dtype, layout, seed, scale=1.0):
    """A tensor of logical ``shape`` and ``dtype`` stored in ``layout`` (falls back to contiguous
    where the layout does not apply), values N(0, scale^2) from ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(s):
        return (torch.randn(s, generator=g, dtype=torch.float64) * scale).to(dtype)
    n = len(shape)
    if layout == "transposed" and n >= 2:
        return rnd(shape[:-2] + (shape[-1], shape[-2])).transpose(-1, -2)
    if layout == "sliced" and n >= 1:
        return rnd(shape[:-1] + (2 * shape[-1] + 1,))[..., 1::2]
    if layout == "expanded" and n >= 2:
        return rnd((shape[0], 1) + tuple(shape[2:])).expand(shape)
    if layout == "channels_last" and n == 4:
        return rnd(shape).contiguous(memory_format=torch.channels_last)
    return rnd(shape)


shapes = st.lists(st.integers(0, 5), min_size=2, max_size=4).map(tuple)
nonempty_shapes = st.lists(st.integers(1, 5), min_size=2, max_size=4).map(tuple)
layouts = st.sampled_from(LAYOUTS)
dtypes = st.sampled_from(FLOATS)
seeds = st.integers(0, 2 ** 31 - 1)
timesteps = st.one_of(st.integers(-2, T + 1), st.just(T - 1), st.just(0))
offsets = st.one_of(st.integers(0, 9), st.sampled_from([2 ** 32 - 1, 2 ** 32 + 5, 2 ** 63, -1]))


# --- the property ---------------------------------------------------------------------------------

def _f64(v):
    return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v


def _outcome(fn, args, kwargs, backend):
    """("ok", outputs) or ("error", type, message) for a front error; anything else propagates."""
    try:
        out = fn(*args, **kwargs, backend=backend)
    except (ValueError, TypeError) as e:
        return ("error", type(e), str(e))
    return ("ok", out if isinstance(out, tuple) else (out,))


def check_against_reference(fn, args, kwargs, backend):
    ref = _outcome(fn, args, kwargs, "reference")
    got = _outcome(fn, args, kwargs, backend) if backend != "reference" else ref
    if ref[0] == "error":
        assert got == ref, f"{backend} answered {got[:2]} where the reference front raised {ref[1].__name__}: {ref[2]}"
        return
    assert got[0] == "ok", f"{backend} raised {got[1].__name__}: {got[2]} where the reference gave a result"
    ref64 = fn(*[_f64(a) for a in args], **{k: _f64(v) for k, v in kwargs.items()}, backend="reference")
    ref64 = ref64 if isinstance(ref64, tuple) else (ref64,)
    inputs = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    for o, r, r64 in zip(got[1], ref[1], ref64):
        assert o.shape == r.shape and o.dtype == r.dtype
        assert torch.isfinite(r.float()).all(), "the reference returned NaN/inf on finite inputs"
        assert torch.isfinite(o.float()).all(), f"{backend} returned NaN/inf on finite inputs"
        if not o.numel():
            continue
        scale = max([r64.abs().max().item(), 1e-30] + [a.abs().max().item() for a in inputs if a.numel()])
        err = (o.double() - r64.double()).abs().max().item()
        err_ref = (r.double() - r64.double()).abs().max().item()
        bound = max(FLOOR[o.dtype] * scale, 2 * err_ref)
        assert err <= bound, f"{backend}: error {err:.3g} > bound {bound:.3g} (reference's own {err_ref:.3g})"


def run_property(strategy, backend):
    """Draw cases from ``strategy`` (as many as the profile allows for ``backend``) and check each."""
    @settings(max_examples=_examples(backend))
    @given(case=strategy)
    def prop(case):
        fn, args, kwargs = case
        check_against_reference(fn, args, kwargs, backend)
    prop()


# --- per-op strategies ------------------------------------------------------------------------

@st.composite
def q_sample_cases(draw):
    shape, dtype = draw(shapes), draw(dtypes)
    x0 = _tensor(shape, dtype, draw(layouts), draw(seeds))
    t = draw(st.one_of(timesteps, st.builds(lambda v, b: torch.full((b,), v, dtype=torch.int64),
                                            timesteps, st.just(shape[0]))))
    if draw(st.booleans()):
        noise = _tensor(shape, draw(dtypes), draw(layouts), draw(seeds))
        return ops.q_sample, (x0, t, SCHEDULE), {"noise": noise}
    target = draw(st.sampled_from([None, "epsilon", "sample", "v_prediction", "x0", "noise"]))
    return ops.q_sample, (x0, t, SCHEDULE), {"seed": draw(seeds), "sample_offset": draw(offsets),
                                             "return_target": target}


@st.composite
def step_cases(draw, ddim):
    shape, dtype = draw(shapes), draw(dtypes)
    x_t = _tensor(shape, dtype, draw(layouts), draw(seeds))
    model_out = _tensor(shape, draw(dtypes), draw(layouts), draw(seeds))
    t = draw(timesteps)
    kw = {"prediction_type": draw(st.sampled_from(["epsilon", "sample", "v_prediction", "eps", "score"])),
          "clip_denoised": draw(st.booleans()),
          "clip_range": draw(st.one_of(st.floats(0.1, 3.0), st.sampled_from(WEIRD_FLOATS)))}
    if draw(st.booleans()):
        kw["noise"] = _tensor(shape, draw(dtypes), draw(layouts), draw(seeds))
    else:
        kw["seed"], kw["sample_offset"] = draw(seeds), draw(offsets)
    if not ddim:
        kw["variance_type"] = draw(st.sampled_from(["fixed_small", "fixed_large", "learned"]))
        return ops.reverse_step, (x_t, model_out, t, SCHEDULE), kw
    t_prev = draw(st.one_of(st.just(-1), st.integers(-3, T + 1), st.just(t - 1 if isinstance(t, int) else -1)))
    kw["eta"] = draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from(WEIRD_FLOATS)))
    kw["final_alpha_bar"] = draw(st.one_of(st.floats(0.01, 1.0), st.sampled_from(WEIRD_FLOATS + [2.0])))
    return ops.ddim_step, (x_t, model_out, t, t_prev, SCHEDULE), kw


@st.composite
def temb_add_cases(draw):
    shape = draw(st.lists(st.integers(0, 5), min_size=3, max_size=4).map(tuple))
    h = _tensor(shape, draw(dtypes), draw(layouts), draw(seeds))
    temb_shape = draw(st.sampled_from([shape[:2], shape[:1] + (shape[1] + 1,), shape[:1]]))
    temb = _tensor(temb_shape, draw(dtypes), draw(st.sampled_from(["contiguous", "transposed", "sliced"])),
                   draw(seeds))
    return ops.temb_add, (h, temb), {}


@st.composite
def groupnorm_cases(draw):
    B, C = draw(st.integers(0, 3)), draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2)))
    shape = (B, C) + spatial
    x = _tensor(shape, draw(dtypes), draw(layouts), draw(seeds), scale=draw(st.sampled_from([0.01, 1.0, 30.0])))
    dtype_p = draw(dtypes)
    weight, bias = _tensor((C,), dtype_p, "contiguous", draw(seeds)), _tensor((C,), dtype_p, "sliced", draw(seeds))
    groups = draw(st.sampled_from([1, C, 2, 3, 0, -1]))
    temb = _tensor((B, C), draw(dtypes), "contiguous", draw(seeds)) if draw(st.booleans()) else None
    kw = {"eps": draw(st.sampled_from([1e-5, 1e-6, 0.1] + WEIRD_FLOATS)), "apply_silu": draw(st.booleans()),
          "temb_mode": draw(st.sampled_from([None, "before_norm", "after_norm", "sideways"]))}
    return ops.groupnorm_temb_silu, (x, weight, bias, groups, temb), kw


@st.composite
def noise_cases(draw):
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=3)))
    kw = {"timestep": draw(st.integers(-1, 3)), "sample_offset": draw(offsets),
          "stream": draw(st.sampled_from([0, 1, 2, 2 ** 32 - 1, 2 ** 32, -1]))}
    seed = draw(st.one_of(seeds, st.sampled_from([2 ** 64 - 1, -2 ** 63, 2 ** 64, -2 ** 63 - 1])))
    if draw(st.booleans()):
        kw["dtype"] = draw(st.sampled_from(FLOATS + [torch.int64, torch.bool]))
        return ops.randn, (shape, seed), kw
    return ops.rand, (shape, seed), kw


@pytest.mark.parametrize("backend", AVAILABLE)
def test_q_sample(backend):
    run_property(q_sample_cases(), backend)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_reverse_step(backend):
    run_property(step_cases(ddim=False), backend)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_ddim_step(backend):
    run_property(step_cases(ddim=True), backend)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_temb_add(backend):
    run_property(temb_add_cases(), backend)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_groupnorm_temb_silu(backend):
    run_property(groupnorm_cases(), backend)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_randn_and_rand(backend):
    run_property(noise_cases(), backend)
