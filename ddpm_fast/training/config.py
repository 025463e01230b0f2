"""The training configuration: one flat dataclass, stored as JSON in every checkpoint.

Every field is checked when a config is made (``TrainConfig(...)``, ``replace``, ``from_dict``),
so a bad value fails before any data is loaded or any step is run: the rules are in
:mod:`ddpm_fast.training.config_rules`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .config_rules import ConfigError, validate_config

__all__ = ["TrainConfig", "ConfigError", "STRUCTURAL_KEYS"]

# keys that must not change when resuming: they change the model's shapes, the meaning of its
# output, or the data stream (which makes the resumed run differ from an uninterrupted one)
STRUCTURAL_KEYS = ("data", "resolution", "channels", "model", "model_kwargs", "conditional", "schedule",
                   "T", "optimizer", "prediction_type", "seed", "batch_size")


@dataclass
class TrainConfig:
    # data and model
    data: str = "digits"                 # "digits" | image folder | MNIST IDX folder/file
    resolution: Optional[int] = None     # None: the data's own (digits 16, folders 32, IDX native)
    channels: Optional[int] = None       # image folders: 1 or 3 (None: detect)
    model: str = "tiny"                  # a UNet preset: "tiny" | "ddpm_cifar10"; "custom" = passed in
    model_kwargs: dict = field(default_factory=dict)   # overrides of the preset (ch, ch_mult, ...)
    # class-conditional on the data's labels (K classes: UNet num_classes=K, label K = null class);
    # each label is dropped to the null class with probability cond_drop_prob, which trains the
    # unconditional model of classifier-free guidance (ddpm_fast/training/conditioning.py)
    conditional: bool = False
    cond_drop_prob: float = 0.1
    # diffusion
    schedule: str = "linear"
    T: int = 1000
    prediction_type: str = "epsilon"     # the training target: epsilon | sample | v_prediction
    min_snr_gamma: Optional[float] = None  # min-SNR-γ loss weighting (Hang et al. 2023), e.g. 5.0
    # optimisation
    steps: int = 2000                    # total optimizer steps (a resumed run continues up to this)
    batch_size: int = 64                 # per process; the global batch is batch_size * world size
    lr: float = 2e-4
    optimizer: str = "adamw"             # "adamw" (betas, weight_decay) | "sgd" (plain, no momentum)
    lr_schedule: str = "constant"        # after warm-up: "constant" | "cosine" (down to min_lr_ratio * lr)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100              # linear warm-up from 0
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0               # max global grad norm; 0 disables
    ema_decay: float = 0.999             # the effective decay warms up as min(d, (1+n)/(10+n))
    precision: str = "auto"              # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    max_nonfinite: int = 10              # stop after this many non-finite losses in a row
    seed: int = 0
    # where and how
    device: Optional[str] = None         # default: cuda if available (cuda:LOCAL_RANK under torchrun)
    backend: Optional[str] = "auto"      # ops backend for q_sample and the sampler
    # backend for the model's fused ops in the training forward/backward; None = "reference" on
    # the CPU (ATen's GroupNorm+SiLU beat the C++ kernels there: 166 vs 200 ms per fwd+bwd of the
    # demo UNet, batch 64, 1 thread, measured), the dispatcher's "auto" elsewhere
    model_backend: Optional[str] = None
    compile: bool = False                # torch.compile the model for training
    threads: Optional[int] = None        # torch.set_num_threads on CPU
    out_dir: str = "runs/ddpm"
    log_every: int = 10                  # progress-bar refresh (steps)
    ckpt_every: int = 500                # 0: only at the end
    sample_every: int = 0                # grids during training (0: only at the end)
    sample_n: int = 64
    sampler: str = "ddim"                # for the grids: ddim (sample_steps) | ddpm (all T)
    sample_steps: int = 50
    sample_guidance: float = 3.0         # conditional runs: classifier-free guidance scale of the grids
    metric: bool = True                  # the digits quality metric at the end (digits data only)
    progress: bool = True

    def __post_init__(self):
        validate_config(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(sorted(unknown)[0], f"unknown training option(s) {sorted(unknown)}; "
                              f"the options are {sorted(names)}")
        d = dict(d)
        if isinstance(d.get("betas"), list):
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def replace(self, **kw) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **kw})
