"""Training options are checked before any work: every TrainConfig field has a rule (a bad value
raises ConfigError naming it when the config is made), cross-field rules included, and train()'s
own arguments (model=, data=) are told apart from the config fields of the same name."""
import math

import pytest
import torch

from ddpm_fast.data import ImageData
from ddpm_fast.training import ConfigError, TrainConfig, train

TINY = {"ch": 8, "ch_mult": [1, 2], "attn_resolutions": []}


def small(tmp_path, **kw):
    base = dict(steps=2, batch_size=4, ckpt_every=0, sample_n=0, model_kwargs=TINY, warmup_steps=0,
                progress=False, metric=False, threads=1, out_dir=str(tmp_path))
    base.update(kw)
    return base


def random_data(n=8, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(1)
    return ImageData(torch.rand(n, *shape, generator=g) * 2 - 1, name="random")


BAD_VALUES = [
    ("min_snr_gamma", -1.0), ("min_snr_gamma", 0.0), ("min_snr_gamma", math.nan), ("min_snr_gamma", math.inf),
    ("ema_decay", -0.1), ("ema_decay", 1.5), ("ema_decay", math.nan),
    ("warmup_steps", -1), ("grad_clip", -1.0), ("grad_clip", math.nan), ("ckpt_every", -5),
    ("threads", 0), ("threads", -2), ("resolution", 0), ("resolution", -8), ("channels", 2),
    ("steps", -1), ("steps", 2.5), ("batch_size", 0), ("T", 1), ("T", "1000"), ("lr", 0.0), ("lr", -1e-3),
    ("lr", math.inf), ("min_lr_ratio", 1.5), ("weight_decay", -0.1), ("betas", (0.9,)), ("betas", (0.9, 1.0)),
    ("max_nonfinite", 0), ("seed", -1), ("seed", 2 ** 64), ("log_every", 0), ("sample_every", -1),
    ("sample_n", -1), ("sample_steps", 0), ("lr_schedule", "cosinus"), ("precision", "fp8"),
    ("sampler", "euler"), ("optimizer", "adam"), ("model", "big"), ("prediction_type", "noise"),
    ("schedule", "linaer"), ("device", "gpu0"), ("backend", "cudaa"), ("model_backend", "x"),
    ("compile", "yes"), ("metric", 1), ("progress", None), ("model_kwargs", [1, 2]), ("data", ""),
    ("out_dir", None), ("batch_size", True),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_every_bad_field_is_refused_when_the_config_is_made(field, value):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value})
    assert e.value.field == field and field in str(e.value)


def test_a_config_error_is_a_value_error_naming_the_rule():
    with pytest.raises(ValueError, match=r"min_snr_gamma: must be a finite number > 0.*None"):
        TrainConfig(min_snr_gamma=0)


@pytest.mark.parametrize("field,value", [("min_snr_gamma", -1.0), ("lr_schedule", "cosinus"),
                                         ("ema_decay", 2.0), ("threads", 0)])
def test_train_refuses_before_loading_data_or_stepping(tmp_path, field, value, monkeypatch):
    """train(**overrides) validates too, and before anything runs: the data loader and the model
    are never reached, and no checkpoint directory is created."""
    import ddpm_fast.training.trainer as trainer
    monkeypatch.setattr(trainer, "_load_data", lambda cfg: pytest.fail("data loaded before the check"))
    with pytest.raises(ConfigError, match=field):
        train(**small(tmp_path / "run", **{field: value}))
    assert not (tmp_path / "run").exists()


def test_sample_steps_above_T_fails_before_training(tmp_path):
    """The default sample_steps (50) DDIM steps cannot be drawn from T=20: said at once, not
    after training when the final grid is sampled."""
    with pytest.raises(ConfigError, match="sample_steps") as e:
        TrainConfig(T=20, sample_n=4)
    assert e.value.field == "sample_steps"
    calls = []
    with pytest.raises(ConfigError, match="sample_steps"):
        train(**small(tmp_path, T=20, sample_n=4), data=random_data(), callback=lambda s, i: calls.append(s))
    assert calls == []
    # the rule applies only when grids are drawn with DDIM
    TrainConfig(T=20, sample_n=0)
    TrainConfig(T=20, sample_n=4, sampler="ddpm")
    TrainConfig(T=20, sample_n=4, sample_steps=20)


def test_resume_and_from_dict_validate_too():
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig().replace(ema_decay=-1)
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"stepz": 3})


@pytest.mark.parametrize("preset", ["tiny", "unet"])
def test_model_name_is_the_config_field_not_a_network(tmp_path, preset):
    """train(model="tiny") (what `ddpm-fast train --model tiny` calls) picks the preset; it used
    to be taken as the nn.Module argument and fail with AttributeError."""
    res = train(model=preset, data=random_data(), **small(tmp_path))
    assert res.config.model == preset and res.step == 2
    assert type(res.model).__name__ == "UNet"


def test_model_must_be_a_module_or_a_preset_name(tmp_path):
    with pytest.raises(TypeError, match="nn.Module"):
        train(model=42, data=random_data(), **small(tmp_path))
    with pytest.raises(ConfigError, match="model"):
        train(model="custom", data=random_data(), **small(tmp_path))


class Doubled(torch.nn.Module):
    """Returns (B, 2C, H, W) for (B, C, H, W): a model built with the wrong out_channels."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


class Named(torch.nn.Module):
    """Returns a dict without a "sample" entry: nothing train() can take as the prediction."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return {"eps": self.conv(x)}


class Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


def test_model_output_shape_must_match_the_target(tmp_path):
    """(B, 2, 8, 8) against a (B, 1, 8, 8) target used to broadcast in the loss and train."""
    calls = []
    with pytest.raises(ValueError, match=r"shape \(4, 2, 8, 8\).*\(4, 1, 8, 8\)"):
        train(model=Doubled(), data=random_data(), callback=lambda s, i: calls.append(s), **small(tmp_path))
    assert calls == []
    with pytest.raises(TypeError, match="returned dict"):
        train(model=Named(), data=random_data(), **small(tmp_path))


def test_train_takes_a_tensor_in_minus_one_one_and_refuses_zero_one(tmp_path):
    x = random_data().images
    assert train(data=x, **small(tmp_path)).step == 2
    with pytest.raises(ValueError, match=r"x \* 2 - 1"):
        train(data=(x + 1) / 2, **small(tmp_path))          # torchvision-style [0, 1]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train(data=x * 127.5 + 127.5, **small(tmp_path))    # float 0..255
    with pytest.raises(TypeError, match="data must be"):
        train(data=[1, 2, 3], **small(tmp_path))


def test_sgd_optimizer_is_plain_gradient_descent(tmp_path):
    """optimizer="sgd": one step moves every weight by exactly -lr * grad (no momentum)."""
    torch.manual_seed(0)
    model = Plain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {}
    for name, p in model.named_parameters():
        p.register_hook(lambda g, name=name: grads.__setitem__(name, g.clone()))
    res = train(model=model, data=random_data(),
                **small(tmp_path, steps=1, optimizer="sgd", lr=0.1, grad_clip=0.0))
    for name, p in res.model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] - 0.1 * grads[name], rtol=0, atol=1e-7)


def test_fp16_on_the_cpu_is_a_config_error_before_the_first_step(tmp_path):
    calls = []
    with pytest.raises(ConfigError, match="precision: fp16 autocast needs a CUDA device"):
        train(data=random_data(), precision="fp16", device="cpu" if torch.cuda.is_available() else None,
              callback=lambda s, i: calls.append(s), **small(tmp_path))
    assert calls == []
