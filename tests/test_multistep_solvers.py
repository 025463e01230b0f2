"""DPM-Solver++ and UniPC (``sampler="dpmsolver++" | "unipc"``) against diffusers' own
``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler``.

Expected values come from diffusers: its ``set_timesteps`` + ``step`` loop on a random
``UNet2DModel`` from the same x_T (whole runs), and its ``step`` fed random model outputs in
float64 with its sigmas cast up to float64 (one step at a time, the coefficients alone).
"""
import itertools

import pytest
import torch

import ddpm_fast
from ddpm_fast.samplers import multistep
from ddpm_fast.samplers.compiled import compile_kwargs
from ddpm_fast.samplers.graph import GraphSampler
from ddpm_fast.samplers.settings import make_spec, resolve
from ddpm_fast.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")
from diffusers import DPMSolverMultistepScheduler, UNet2DModel, UniPCMultistepScheduler  # noqa: E402

SHAPE = (2, 3, 8, 8)
TOL = 1e-4            # max abs over a whole float32 run (the bound)
CLASSES = {"dpmsolver++": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}
SOLVERS = [("dpmsolver++", o, st) for o in (1, 2, 3) for st in ("midpoint", "heun")] + \
          [("unipc", o, st) for o in (1, 2, 3) for st in ("bh1", "bh2")]


def _unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(scope="module")
def unet():
    return _unet()


def _x_T(dtype=torch.float32):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)).to(dtype)


def _scheduler(sampler, order, solver_type, **config):
    # bh1 needs a nonzero last sigma: diffusers' own UniPC bh1 step gives NaN at sigma = 0
    if solver_type == "bh1":
        config.setdefault("final_sigmas_type", "sigma_min")
    return CLASSES[sampler](num_train_timesteps=1000, solver_order=order, solver_type=solver_type, **config)


def diffusers_loop(model, sch, x_T, steps):
    sch.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(model(x, t).sample, t, x).prev_sample
    return x


# --- whole runs from the same x_T -----------------------------------------------------------------

@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("sampler,order,solver_type", SOLVERS)
def test_run_equals_diffusers_loop(unet, sampler, order, solver_type, steps):
    """float32, v-prediction: x0 = α x − σ v stays O(1), so 1e-4 absolute is a real bound."""
    sch = _scheduler(sampler, order, solver_type, prediction_type="v_prediction")
    want = diffusers_loop(unet, sch, _x_T(), steps)
    got = ddpm_fast.sample(unet, SHAPE, schedule=sch, x_T=_x_T(), backend="reference")
    assert (got - want).abs().max().item() <= TOL
    if steps != 10:
        return
    # the same run from keyword arguments on the scheduler's betas
    got_kw = ddpm_fast.sample(unet, SHAPE, schedule=NoiseSchedule.from_diffusers(sch), x_T=_x_T(),
                              sampler=sampler, steps=steps, solver_order=order, solver_type=solver_type,
                              final_sigmas_type=sch.config.final_sigmas_type, backend="reference")
    assert (got_kw - want).abs().max().item() <= TOL


def _available(backend):
    from ddpm_fast.ops import dispatch
    return dispatch.unavailable_reason(backend, "cpu") is None


@pytest.mark.parametrize("backend", [
    pytest.param("cpp", marks=[pytest.mark.extension, pytest.mark.skipif(not _available("cpp"), reason="no cpp")]),
    pytest.param("triton", marks=[pytest.mark.triton,
                                  pytest.mark.skipif(not _available("triton"), reason="no triton on cpu")])])
@pytest.mark.parametrize("sampler,order,solver_type", [("dpmsolver++", 3, "midpoint"), ("unipc", 3, "bh2")])
def test_fused_backends_equal_diffusers_loop(unet, backend, sampler, order, solver_type):
    sch = _scheduler(sampler, order, solver_type, prediction_type="v_prediction")
    want = diffusers_loop(unet, sch, _x_T(), 10)
    got = ddpm_fast.sample(unet, SHAPE, schedule=sch, x_T=_x_T(), backend=backend)
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("sampler,order,solver_type", [s for s in SOLVERS if s[1] > 1])
def test_epsilon_run_equals_diffusers_loop(unet, sampler, order, solver_type):
    """ε-prediction: a random network's x0 = (x − σ ε)/α reaches |x| ~ 500, where float32's
    spacing is 3e-5, so the float32 run is compared relative to that scale and the float64 run
    (the network and diffusers' sigmas in float64) absolutely. DPMSolverMultistepScheduler casts
    the sample to float32 inside step(), so its "float64" run is not one: UniPC only there."""
    sch = _scheduler(sampler, order, solver_type)
    want = diffusers_loop(unet, sch, _x_T(), 10)
    got = ddpm_fast.sample(unet, SHAPE, schedule=sch, x_T=_x_T(), backend="reference")
    assert (got - want).abs().max().item() <= 1e-6 * max(1.0, want.abs().max().item())
    if sampler == "dpmsolver++":
        return
    net64 = _unet().double()
    sch.set_timesteps(10)
    sch.sigmas = sch.sigmas.double()
    x = _x_T(torch.float64)
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(net64(x, t).sample, t, x).prev_sample
    got64 = ddpm_fast.sample(net64, SHAPE, schedule=sch, x_T=_x_T(torch.float64), steps=10,
                             dtype=torch.float64, backend="reference")
    assert (got64 - x).abs().max().item() <= TOL * 1e-3


@pytest.mark.parametrize("config", [
    dict(use_karras_sigmas=True), dict(final_sigmas_type="sigma_min"), dict(timestep_spacing="leading"),
    dict(timestep_spacing="trailing"), dict(lower_order_final=False, final_sigmas_type="sigma_min"),
    dict(prediction_type="sample", thresholding=True, sample_max_value=1.5),
])
@pytest.mark.parametrize("sampler,order,solver_type", [("dpmsolver++", 3, "midpoint"), ("unipc", 3, "bh2")])
def test_config_fields_are_honoured(unet, sampler, order, solver_type, config):
    sch = _scheduler(sampler, order, solver_type, **{"prediction_type": "v_prediction", **config})
    want = diffusers_loop(unet, sch, _x_T(), 10)
    got = ddpm_fast.sample(unet, SHAPE, schedule=sch, x_T=_x_T(), backend="reference")
    assert (got - want).abs().max().item() <= TOL
    got_dict = ddpm_fast.sample(unet, SHAPE, schedule=dict(sch.config), x_T=_x_T(), steps=10,
                                backend="reference")
    assert (got_dict - want).abs().max().item() <= TOL


def test_dpm_only_and_unipc_only_fields(unet):
    for sch in (_scheduler("dpmsolver++", 2, "heun", prediction_type="v_prediction", euler_at_final=True,
                           lower_order_final=False),
                _scheduler("dpmsolver++", 2, "midpoint", prediction_type="v_prediction", lambda_min_clipped=-5.1),
                _scheduler("unipc", 3, "bh2", prediction_type="v_prediction", disable_corrector=[0, 3]),
                _scheduler("unipc", 2, "bh2", prediction_type="v_prediction", use_karras_sigmas=True,
                           sigma_min=0.05, sigma_max=20.0)):
        want = diffusers_loop(unet, sch, _x_T(), 12)
        got = ddpm_fast.sample(unet, SHAPE, schedule=sch, x_T=_x_T(), backend="reference")
        assert (got - want).abs().max().item() <= TOL, sch.config


@pytest.mark.parametrize("sampler,order,solver_type", [("dpmsolver++", 2, "midpoint"), ("unipc", 3, "bh2")])
def test_classifier_free_guidance_equals_diffusers_cfg_loop(sampler, order, solver_type):
    """Guidance with a multistep solver: diffusers' pipeline loop (the 2B batch, conditional
    half first, m_u + w (m_c - m_u), then the scheduler's step) from the same x_T."""
    torch.manual_seed(1)
    net = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 8),
                      norm_num_groups=4, num_class_embeds=5, down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    y, null, w = torch.tensor([1, 3]), torch.tensor([4, 4]), 2.5
    sch = _scheduler(sampler, order, solver_type, prediction_type="v_prediction")
    sch.set_timesteps(10)
    x = _x_T()
    with torch.no_grad():
        for t in sch.timesteps:
            m_c, m_u = net(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample.chunk(2)
            x = sch.step(m_u + w * (m_c - m_u), t, x).prev_sample
    got = ddpm_fast.sample(net, SHAPE, schedule=sch, x_T=_x_T(), model_kwargs={"class_labels": y},
                           uncond_kwargs={"class_labels": null}, guidance_scale=w, backend="reference")
    assert (got - x).abs().max().item() <= TOL


# --- one step at a time, float64 ----------------------------------------------------------------

@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sampler,order,solver_type", SOLVERS)
def test_each_step_equals_diffusers_step_in_float64(sampler, order, solver_type, prediction_type, steps):
    """diffusers' step (its sigmas cast to float64) fed random model outputs vs the reference
    op on the coefficient table, from the same sample every step. DPMSolverMultistepScheduler
    casts the sample to float32 inside step() (so every sample here is a float32 value), and its
    term (σ_t/σ_s)·sample is then a float32 product (the ratio rounded to float32, then the
    product: 2^-23 relative), which its bound allows for; everything else is float64."""
    sch = _scheduler(sampler, order, solver_type, prediction_type=prediction_type)
    sch.set_timesteps(steps)
    sch.sigmas = sch.sigmas.double()
    _, s = resolve(sch, {})
    spec = make_spec(NoiseSchedule.from_diffusers(sch), s, SHAPE, torch.device("cpu"), torch.float64, 0,
                     "reference", True)
    assert list(spec.plan.timesteps) == [int(t) for t in sch.timesteps]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(SHAPE, generator=g).double()
    history = spec.new_history()
    for i, t in enumerate(sch.timesteps):
        m = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        want = sch.step(m, t, x).prev_sample
        got = spec.step(x, m, None, None, None, torch.tensor([i]), history)
        f32_term = 2.0 ** -23 * x.abs().max().item() if sampler == "dpmsolver++" else 0.0
        assert (got - want).abs().max().item() <= 1e-10 * max(1.0, want.abs().max().item()) + f32_term, i
        # UniPC's corrector starts from its own previous sample, which the identity behind the
        # table assumes is the one x came from: x is not rounded there
        x = want.float().double() if sampler == "dpmsolver++" else want


# --- the op and the loops -----------------------------------------------------------------------

def test_reference_op_is_the_documented_linear_combination():
    """float64 closed form of docs/ops_contract.md on odd shapes, every history depth."""
    g = torch.Generator().manual_seed(0)
    for K in range(4):
        x, m = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
        h = torch.randn(K, 3, 5, 7, generator=g)
        table = torch.randn(4, 8, generator=g, dtype=torch.float64)
        x0, xn = ddpm_fast.ops.multistep_update(x, m, h, table, 2, backend="reference")[::-1]
        r = table[2]
        want_x0 = r[0] * x.double() + r[1] * m.double()
        want = r[2] * x.double() + r[3] * want_x0 + sum((r[4 + k] * h[k].double() for k in range(K)),
                                                         torch.zeros_like(want_x0))
        assert torch.allclose(x0.double(), want_x0, atol=1e-5) and torch.allclose(xn.double(), want, atol=1e-5)


@pytest.mark.parametrize("mode,compiled", [("step", False), ("loop", False), ("step", True)])
def test_graph_and_compiled_loops_equal_the_eager_run(unet, mode, compiled):
    """The captured-loop code path (its static x0 ring, reset per run) and the compiled step,
    on CPU: the "graph" replays the recorded function."""
    class EagerReplay(GraphSampler):
        needs_cuda = False

        def _record(self, fn):
            return fn

    sch = _scheduler("unipc", 3, "bh2", prediction_type="v_prediction")
    sch.set_timesteps(10)
    _, s = resolve(sch, {})
    spec = make_spec(NoiseSchedule.from_diffusers(sch), s, SHAPE, torch.device("cpu"), torch.float32, 0,
                     "reference", True)
    ckw = compile_kwargs({"backend": "eager"}, capturing=True) if compiled else None
    runner = EagerReplay(spec, unet, None, ckw, mode)
    want = ddpm_fast.sample(unet, SHAPE, schedule=sch, x_T=_x_T(), backend="reference")
    for _ in range(2):   # the second run starts from a zeroed ring again
        got, _, bad = runner.run(0, _x_T(), None)
        assert (got - want).abs().max().item() <= 1e-6 and int(bad) == -1
    got = ddpm_fast.sample(unet, SHAPE, schedule=sch, x_T=_x_T(), backend="reference",
                           compile={"backend": "eager"})
    assert (got - want).abs().max().item() <= 1e-6


def test_chunks_and_seed_give_the_same_samples(unet):
    kw = dict(sampler="dpmsolver++", steps=8, solver_order=3, prediction_type="v_prediction", seed=4,
              backend="reference")
    whole = ddpm_fast.sample(unet, (3, 3, 8, 8), **kw)
    chunked = ddpm_fast.sample(unet, (3, 3, 8, 8), chunk_size=2, **kw)
    assert torch.allclose(whole, chunked, atol=1e-5) and torch.isfinite(whole).all()


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,err,match", [
    (dict(solver_order=0), ValueError, "solver_order must be 1, 2 or 3"),
    (dict(solver_order=4), ValueError, "solver_order must be 1, 2 or 3"),
    (dict(solver_order=2.0), TypeError, "solver_order must be an int"),
    (dict(solver_order=True), TypeError, "solver_order must be an int"),
    (dict(solver_type="bh2"), ValueError, "solver_type for sampler='dpmsolver\\+\\+'"),
    (dict(sampler="unipc", solver_type="heun"), ValueError, "solver_type for sampler='unipc'"),
    (dict(final_sigmas_type="none"), ValueError, "final_sigmas_type must be one of"),
    (dict(lower_order_final="yes"), TypeError, "lower_order_final must be a bool"),
    (dict(eta=0.5), ValueError, "eta applies to sampler='ddim' only"),
    (dict(steps=0), ValueError, "steps must be an int >= 1"),
    (dict(steps=5, timesteps=[9, 5, 1]), ValueError, "steps or timesteps"),
    (dict(sampler="unipc", solver_type="bh1"), ValueError, "bh1.*undefined at step 4 of 5"),
    (dict(sampler="ddim", solver_order=2), ValueError, "solver_order apply to sampler='dpmsolver\\+\\+' or 'unipc'"),
    (dict(sampler="heun"), ValueError, "sampler must be one of"),
    (dict(steps=100), ValueError, "twice .* step size would be 0"),
])
def test_bad_settings_are_clear_errors(kw, err, match):
    kw = {"sampler": "dpmsolver++", "steps": 5, **kw}
    with pytest.raises(err, match=match):
        ddpm_fast.sample(lambda x, t: x, (1, 1, 2, 2), schedule=NoiseSchedule.linear(100), **kw)


@pytest.mark.parametrize("config,match", [
    (dict(algorithm_type="sde-dpmsolver++"), "algorithm_type='sde-dpmsolver\\+\\+'"),
    (dict(use_lu_lambdas=True), "use_lu_lambdas=True"),
    (dict(use_exponential_sigmas=True), "use_exponential_sigmas=True"),
    (dict(variance_type="learned_range"), "variance_type='learned_range'"),
    (dict(prediction_type="flow_prediction"), "prediction_type='flow_prediction'"),
    (dict(solver_order=4), "solver_order must be 1, 2 or 3"),
])
def test_unsupported_dpm_config_is_named(config, match):
    cfg = {**dict(DPMSolverMultistepScheduler().config), **config}
    with pytest.raises(ValueError, match=match):
        ddpm_fast.sample(lambda x, t: x, (1, 1, 2, 2), schedule=cfg, steps=5)


def test_unsupported_unipc_config_is_named():
    cfg = dict(UniPCMultistepScheduler().config)
    with pytest.raises(ValueError, match="predict_x0=False"):
        ddpm_fast.sample(lambda x, t: x, (1, 1, 2, 2), schedule={**cfg, "predict_x0": False}, steps=5)
    with pytest.raises(ValueError, match="solver_p"):
        ddpm_fast.sample(lambda x, t: x, (1, 1, 2, 2), schedule={**cfg, "solver_p": object()}, steps=5)
    with pytest.raises(ValueError, match="unknown_field"):
        ddpm_fast.sample(lambda x, t: x, (1, 1, 2, 2), schedule={**cfg, "unknown_field": 1}, steps=5)
    with pytest.raises(ValueError, match="sampler='dpmsolver\\+\\+' conflicts"):
        ddpm_fast.sample(lambda x, t: x, (1, 1, 2, 2), schedule=cfg, sampler="dpmsolver++", steps=5)


def test_op_front_rejects_bad_input():
    x = torch.zeros(2, 3)
    table = torch.zeros(4, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="history must have shape"):
        ddpm_fast.ops.multistep_update(x, x, torch.zeros(4, 2, 3), table, 0)
    with pytest.raises(ValueError, match="table must be a float64 tensor"):
        ddpm_fast.ops.multistep_update(x, x, torch.zeros(1, 2, 3), table.float(), 0)
    with pytest.raises(ValueError, match="out of range"):
        ddpm_fast.ops.multistep_update(x, x, torch.zeros(1, 2, 3), table, 4)
