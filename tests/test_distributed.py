"""Two gloo processes on the CPU (torchrun, localhost only): DDP training keeps the ranks'
weights identical and matches one process with the same global batch; sharded sampling gives
exactly the single-process samples for the same seed."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ddpm_fast.data import ImageData
from ddpm_fast.training import TrainConfig, train

pytestmark = pytest.mark.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"ch": 8, "ch_mult": [1, 2], "attn_resolutions": [8]}


def make_data():
    g = torch.Generator().manual_seed(0)
    return ImageData(torch.rand(48, 1, 16, 16, generator=g) * 2 - 1, labels=torch.arange(48) % 3, name="random")


def config(out_dir, batch_size, **kw):
    base = dict(steps=3, batch_size=batch_size, ckpt_every=0, sample_n=5, sample_steps=4,
                model_kwargs=TINY, lr=1e-3, warmup_steps=1, progress=False, metric=False,
                threads=1, out_dir=str(out_dir), backend="reference")
    return TrainConfig(**{**base, **kw})


# plain SGD without clipping: the update is lr * the all-reduced gradient, so a sum instead of a
# mean over the ranks doubles it (AdamW normalises the gradient's scale away and would not see it)
SGD = dict(optimizer="sgd", grad_clip=0.0, lr=0.5, warmup_steps=0, sample_n=0)
# class-conditional, half the labels dropped to the null class: the drops are keyed by the
# global sample index, so the ranks' halves are the single process's batch; 2 samples per class,
# guided (each rank passes its rows of the labels and of the null labels)
COND = dict(conditional=True, cond_drop_prob=0.5, sample_n=6, sample_guidance=3.0)


_WORKER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, {here!r})
    from test_distributed import COND, SGD, config, make_data
    from ddpm_fast.training import train
    rank = int(os.environ["RANK"])
    assert int(os.environ["WORLD_SIZE"]) == 2
    res = train(config({out!r}, batch_size=4), data=make_data())
    t = {{"model." + k: v.contiguous() for k, v in res.model.state_dict().items()}}
    t.update({{"ema." + k: v.contiguous() for k, v in res.ema.state_dict().items()}})
    if res.samples is not None:
        t["samples"] = res.samples.contiguous()
    save_file(t, os.path.join({out!r}, f"rank{{rank}}.safetensors"))
    print("rank", rank, "losses", res.losses, "has_samples", res.samples is not None)
    # the process group outlives train(): a second run reuses it (re-creating it on torchrun's
    # store could hang under load, both ranks in DDP's first collective)
    import torch.distributed as dist
    group = dist.group.WORLD
    assert dist.is_initialized() and group is not None
    res = train(config(os.path.join({out!r}, "sgd"), batch_size=4, **SGD), data=make_data())
    assert dist.group.WORLD is group
    save_file({{k: v.contiguous() for k, v in res.model.state_dict().items()}},
              os.path.join({out!r}, f"rank{{rank}}_sgd.safetensors"))
    res = train(config(os.path.join({out!r}, "cond"), batch_size=4, **COND), data=make_data())
    t = {{k: v.contiguous() for k, v in res.model.state_dict().items()}}
    if res.samples is not None:
        t["samples"] = res.samples.contiguous()
    save_file(t, os.path.join({out!r}, f"rank{{rank}}_cond.safetensors"))
""")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    script = out / "worker.py"
    script.write_text(_WORKER.format(root=ROOT, here=os.path.dirname(os.path.abspath(__file__)), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=str(out))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    from safetensors.torch import load_file
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)], proc.stdout, out


def test_sgd_on_two_ranks_equals_one_process_at_the_global_batch(two_rank_run, tmp_path):
    """Catches a sum-instead-of-mean gradient all-reduce: with plain SGD and no clipping it would
    double every update; the tolerance is far below the size of the updates themselves."""
    from safetensors.torch import load_file
    from ddpm_fast.data.indices import mix_seed
    from ddpm_fast.training.trainer import build_model
    out = two_rank_run[2]
    r0, r1 = (load_file(str(out / f"rank{r}_sgd.safetensors")) for r in range(2))
    single = train(config(tmp_path, batch_size=8, **SGD), data=make_data()).model.state_dict()
    torch.manual_seed(mix_seed(0, 0xC0FFEE))
    init = build_model(config(tmp_path, 8), (1, 16, 16)).state_dict()
    biggest_update = max(float((single[k] - init[k]).abs().max()) for k in single)
    assert biggest_update > 1e-2
    for k, p in single.items():
        assert torch.equal(r0[k], r1[k]), k
        torch.testing.assert_close(r0[k], p, atol=2e-5, rtol=1e-4)


def test_both_ranks_end_with_identical_weights(two_rank_run):
    (r0, r1), out, _ = two_rank_run
    weights = [k for k in r0 if k.startswith(("model.", "ema."))]
    assert weights and set(weights) == {k for k in r1 if k != "samples"}
    for k in weights:
        assert torch.equal(r0[k], r1[k]), k
    assert "has_samples True" in out and "has_samples False" in out   # gathered on rank 0 only


def test_two_ranks_match_one_process_with_the_global_batch(two_rank_run, tmp_path):
    """2 x batch 4 sees exactly the examples, timesteps and noise of 1 x batch 8; only the
    order of the gradient all-reduce differs, so the weights agree to float32 rounding."""
    (r0, _), _, _ = two_rank_run
    single = train(config(tmp_path, batch_size=8), data=make_data())
    init = None
    for name, p in single.model.state_dict().items():
        torch.testing.assert_close(r0["model." + name], p, atol=2e-5, rtol=1e-4)
    for name, p in single.ema.state_dict().items():
        torch.testing.assert_close(r0["ema." + name], p, atol=2e-5, rtol=1e-4)
    # and training moved the weights (the comparison is not between two untouched inits)
    from ddpm_fast.training.trainer import build_model
    from ddpm_fast.data.indices import mix_seed
    torch.manual_seed(mix_seed(0, 0xC0FFEE))
    init = build_model(config(tmp_path, 8), (1, 16, 16)).state_dict()
    assert any(not torch.equal(init[k], r0["model." + k]) for k in init)


def test_sharded_sample_equals_single_process_sample(two_rank_run):
    (r0, _), _, _ = two_rank_run
    from ddpm_fast.sampling import sample
    from ddpm_fast.training.trainer import build_model
    cfg = config("unused", 4)
    model = build_model(cfg, (1, 16, 16))
    model.load_state_dict({k[4:]: v for k, v in r0.items() if k.startswith("ema.")})
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # as the workers: CPU convolutions round differently per thread count
    try:
        x = sample(model, (5, 1, 16, 16), schedule="linear", sampler="ddim", steps=4, seed=cfg.seed,
                   prediction_type="epsilon", backend="reference")
    finally:
        torch.set_num_threads(threads)
    # rank 0 drew samples 0-2, rank 1 samples 3-4 (sample_offset=3): the images of one batch.
    # The noise is identical (counter-based); the CPU convolutions of a batch of 3 and of 5 round
    # differently in the last bit (measured max diff 1.8e-7), hence the float32-level tolerance.
    assert r0["samples"].shape == (5, 1, 16, 16)
    torch.testing.assert_close(r0["samples"], x, atol=1e-5, rtol=0)



def test_conditional_two_ranks_match_one_process(two_rank_run, tmp_path):
    """Label drops and the per-class sample grid are split over the ranks by global sample
    index: the same labels, weights and images as one process with the global batch."""
    from safetensors.torch import load_file
    out = two_rank_run[2]
    r0, r1 = (load_file(str(out / f"rank{r}_cond.safetensors")) for r in range(2))
    single = train(config(tmp_path, batch_size=8, **COND), data=make_data())
    assert "samples" not in r1 and torch.equal(single.sample_labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    for k, p in single.model.state_dict().items():
        assert torch.equal(r0[k], r1[k]), k
        torch.testing.assert_close(r0[k], p, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(r0["samples"], single.samples, atol=1e-5, rtol=0)
