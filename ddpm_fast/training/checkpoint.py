"""Checkpoints as one safetensors file, written atomically.

Tensors: ``model.<name>`` (raw weights), ``ema.<name>`` (EMA weights), ``optim.<i>.<key>``
(the optimizer's per-parameter state, flattened), ``scaler.<key>`` (fp16 grad scaler),
``log.loss`` (loss per step, for the loss curve). Metadata (strings): ``format``, ``step``,
``config`` (JSON), ``optim`` (JSON: param groups and non-tensor state), ``scaler`` (JSON).

A checkpoint is written to ``<path>.tmp-<pid>``, flushed to disk, then renamed over ``<path>``
(``os.replace`` is atomic on POSIX and Windows): a kill at any moment leaves either the previous
checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "FORMAT"]

FORMAT = "ddpm_fast.checkpoint.v1"


@dataclass
class Checkpoint:
    step: int
    config: dict
    model: dict                      # name -> tensor
    ema: Optional[dict] = None
    optimizer: Optional[dict] = None  # torch optimizer state_dict form
    scaler: Optional[dict] = None
    losses: Optional[torch.Tensor] = None
    extra: dict = field(default_factory=dict)
    path: Optional[str] = None        # where it was loaded from (for error messages)


class CheckpointError(ValueError):
    """A file that is not a readable ddpm_fast checkpoint, or one that does not fit the model.
    The message names the file and what to do."""


def _flatten_optimizer(sd: dict) -> tuple[dict, dict]:
    tensors, meta_state = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                meta_state.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": meta_state}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = v
    for idx, st in meta.get("state", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def _own(t: torch.Tensor) -> torch.Tensor:
    # safetensors refuses tensors sharing storage; a contiguous CPU copy of each is always safe
    return t.detach().to("cpu", copy=True).contiguous()


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> str:
    """Write ``ckpt`` atomically to ``path`` (tmp file + fsync + os.replace). Returns path."""
    from safetensors.torch import save_file
    path = os.fspath(path)
    tensors = {f"model.{k}": _own(v) for k, v in ckpt.model.items()}
    if ckpt.ema is not None:
        tensors.update({f"ema.{k}": _own(v) for k, v in ckpt.ema.items()})
    meta = {"format": FORMAT, "step": str(int(ckpt.step)), "config": json.dumps(ckpt.config, sort_keys=True),
            "extra": json.dumps(ckpt.extra, sort_keys=True)}
    if ckpt.optimizer is not None:
        ot, om = _flatten_optimizer(ckpt.optimizer)
        tensors.update({k: _own(v) for k, v in ot.items()})
        meta["optim"] = json.dumps(om)
    if ckpt.scaler is not None:
        st = {k: v for k, v in ckpt.scaler.items() if not isinstance(v, torch.Tensor)}
        tensors.update({f"scaler.{k}": _own(v) for k, v in ckpt.scaler.items() if isinstance(v, torch.Tensor)})
        meta["scaler"] = json.dumps(st)
    if ckpt.losses is not None:
        tensors["log.loss"] = _own(torch.as_tensor(ckpt.losses, dtype=torch.float32))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


_NOT_READABLE = ("not a readable checkpoint ({why}): it is truncated, empty or not a safetensors "
                 "file. Pass the last.safetensors a training run wrote (an interrupted run keeps "
                 "its previous checkpoint intact)")


def load_checkpoint(path: str | os.PathLike, device="cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on ``device``).

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` (naming the file)
    for a directory, a truncated or foreign file, or missing metadata."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it "
                              f"(e.g. {os.path.join(path, 'last.safetensors')})")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        meta, groups = _read(path, device)
    except CheckpointError:
        raise
    except Exception as e:   # safetensors' SafetensorError, OSError, UnicodeDecodeError, ...
        raise CheckpointError(f"{path}: " + _NOT_READABLE.format(why=f"{type(e).__name__}: {e}")) from None
    try:
        optimizer = _unflatten_optimizer(groups["optim"], json.loads(meta["optim"])) if "optim" in meta else None
        scaler = None
        if "scaler" in meta:
            scaler = dict(json.loads(meta["scaler"]))
            scaler.update(groups["scaler"])
        return Checkpoint(step=int(meta["step"]), config=json.loads(meta["config"]), model=groups["model"],
                          ema=groups["ema"] or None, optimizer=optimizer, scaler=scaler,
                          losses=groups["log"].get("loss"), extra=json.loads(meta.get("extra", "{}")),
                          path=path)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged ddpm_fast checkpoint metadata ({type(e).__name__}: {e}); "
                              "use an earlier checkpoint or start a new run") from None


def _read(path: str, device) -> tuple[dict, dict]:
    """(metadata, tensors grouped by prefix) of a ddpm_fast safetensors file."""
    from safetensors import safe_open
    with safe_open(path, framework="pt", device=str(device)) as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{path}: a safetensors file but not a ddpm_fast checkpoint (format "
                f"{meta.get('format')!r}, expected {FORMAT!r}); to sample from other weights, "
                "load them into your model and call ddpm_fast.sample(model, ...)")
        groups: dict[str, dict] = {"model": {}, "ema": {}, "optim": {}, "scaler": {}, "log": {}}
        for name in f.keys():
            prefix, _, rest = name.partition(".")
            if prefix not in groups or not rest:
                raise CheckpointError(f"{path}: unexpected tensor {name!r} in a ddpm_fast checkpoint; "
                                      "use an earlier checkpoint or start a new run")
            groups[prefix][rest if prefix != "optim" else name] = f.get_tensor(name)
    return meta, groups
