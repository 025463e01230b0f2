"""Training: ``train(...)`` (also ``ddpm_fast.train``), its config, checkpoints, multi-process helpers."""
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .trainer import TrainResult, build_model, load_for_sampling, train

__all__ = ["train", "TrainConfig", "TrainResult", "build_model", "load_for_sampling", "Checkpoint",
           "CheckpointError", "ConfigError", "load_checkpoint", "save_checkpoint"]
