"""Command line: ``ddpm-fast train | sample | demo`` (also ``python -m ddpm_fast ...``).

    ddpm-fast train --data digits --steps 3000 --out-dir runs/digits
    ddpm-fast train --out-dir runs/digits --resume           # continue after a kill
    torchrun --nproc_per_node 2 -m ddpm_fast train ...        # multi-process (DDP)
    ddpm-fast sample --checkpoint runs/digits/last.safetensors --n 64 --seed 0 \\
        --sampler ddim --steps 50 --out grid.png
    ddpm-fast train --conditional --cond-drop 0.1 --out-dir runs/cond   # class-conditional
    ddpm-fast sample --checkpoint runs/cond/last.safetensors --class 7 --guidance 3 --n 64
    ddpm-fast sample --checkpoint runs/digits/last.safetensors --model-dtype bf16   # bf16 forward
    ddpm-fast demo                                            # what `make demo` runs

An error prints one line (what was wrong, which option, what to do) and exits with status 1;
``--debug`` (or the environment variable DDPM_FAST_DEBUG=1) shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

# training options whose flag is not the field's name with dashes (the field's flag works too)
_FLAG_ALIASES = {"cond_drop_prob": "--cond-drop"}

# --model-dtype: sample(model_dtype=)'s torch dtype by name (None: no autocast)
_MODEL_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}

_PRED_ALIASES = {"eps": "epsilon", "epsilon": "epsilon", "x0": "sample", "sample": "sample",
                 "v": "v_prediction", "v_prediction": "v_prediction"}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .training.config import TrainConfig
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flags = [f"--{f.name.replace('_', '-')}"]
        if f.name in _FLAG_ALIASES:
            flags.insert(0, _FLAG_ALIASES[f.name])
        flag = flags[-1]
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"(default: {default!r})"
        if f.name == "model_kwargs":
            p.add_argument(flag, type=json.loads, default=None, metavar="JSON",
                           help='UNet preset overrides as JSON, e.g. \'{"ch": 16}\' ' + help_)
        elif f.name == "betas":
            p.add_argument(flag, type=float, nargs=2, default=None, help=help_)
        elif f.name == "prediction_type":
            p.add_argument(flag, choices=sorted(_PRED_ALIASES), default=None,
                           help="training target: eps | x0 | v " + help_)
        elif hint is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
            p.add_argument(*flags, dest=f.name, type=base if base in (int, float) else str, default=None,
                           help=help_)


def _debug_flag(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="on an error, show the Python traceback (also: DDPM_FAST_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    from .training.demo import DEMO_CONFIG, DEMO_GUIDANCE, DEMO_GUIDANCE_RESCALE
    DEMO_STEPS = DEMO_CONFIG["steps"]
    ap = argparse.ArgumentParser(prog="ddpm-fast", description="Fast DDPM training and sampling.")
    _debug_flag(ap, False)
    sub = ap.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a DDPM (checkpoints, sample grids, loss curve)")
    _add_train_options(tr)
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                    help="continue from OUT_DIR/last.safetensors (or the given checkpoint)")

    sp = sub.add_parser("sample", help="sample a grid from a checkpoint's EMA weights")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--n", type=int, default=None,
                    help="images (default 64); with --class all, images per class (default 8)")
    sp.add_argument("--class", dest="class_", default=None, metavar="K|NAME|all|none",
                    help="conditional checkpoints: the class to draw (its number, or its sub-folder "
                         "name for a model trained on an image folder), 'all' (default: one row per "
                         "class) or 'none' (the null class: the unconditional model)")
    sp.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance scale w: eps_u + w (eps_c - eps_u); 1 (default) "
                         "is the conditional model alone")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--sampler", choices=["ddpm", "ddim", "dpmsolver++", "unipc"], default="ddpm",
                    help="dpmsolver++ / unipc: the few-step multistep solvers (default 20 steps, order 2)")
    sp.add_argument("--steps", type=int, default=None,
                    help="sampling steps, respaced over T (default: all T for ddpm)")
    sp.add_argument("--eta", type=float, default=0.0)
    sp.add_argument("--out", default="grid.png")
    sp.add_argument("--batch-size", type=int, default=None, help="sample in chunks (same images)")
    sp.add_argument("--device", default=None)
    sp.add_argument("--backend", default="auto")
    sp.add_argument("--compile", action="store_true", help="the torch.compile'd fast loop")
    sp.add_argument("--model-dtype", choices=sorted(_MODEL_DTYPES), default="fp32",
                    help="run the model forward under autocast to bf16 (or fp16); the sampler state "
                         "stays float32 (default: fp32, no autocast)")
    sp.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    sp.add_argument("--metric", action=argparse.BooleanOptionalAction, default=True,
                    help="print the digits quality metric (digits checkpoints)")
    sp.add_argument("--threads", type=int, default=None)

    dm = sub.add_parser("demo", help="train a class-conditional model on the embedded digits, "
                                     "sample one row per class, report")
    dm.add_argument("--out-dir", default="out")
    dm.add_argument("--steps", type=int, default=None,
                    help=f"training steps (default: {DEMO_STEPS}, the same on every machine)")
    dm.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: 1, the same on every machine)")
    dm.add_argument("--guidance", type=float, default=DEMO_GUIDANCE,
                    help=f"classifier-free guidance scale of the samples (default: {DEMO_GUIDANCE:g})")
    dm.add_argument("--guidance-rescale", type=float, default=DEMO_GUIDANCE_RESCALE,
                    help="guidance_rescale of the samples, in [0, 1] (default: "
                         f"{DEMO_GUIDANCE_RESCALE:g}; 0 is plain classifier-free guidance)")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--no-reference", action="store_true", help="skip the reference-backend timing")
    for p in (tr, sp, dm):       # --debug after the command too; SUPPRESS keeps a top-level --debug
        _debug_flag(p, argparse.SUPPRESS)
    return ap


def _train_cmd(args) -> int:
    from .training import TrainConfig, train
    over = {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            over[f.name] = v
    if "prediction_type" in over:
        over["prediction_type"] = _PRED_ALIASES[over["prediction_type"]]
    if "betas" in over:
        over["betas"] = tuple(over["betas"])
    res = train(resume=args.resume, **over)
    print(f"trained {res.step} steps, {res.images_per_second:.0f} images/s; loss (last 100 mean) "
          f"{_tail_mean(res.losses):.4f}; checkpoint {res.checkpoint}")
    return 0


def _tail_mean(losses, k: int = 100) -> float:
    import math
    tail = [v for v in losses[-k:] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else float("nan")


def _sample_cmd(args) -> int:
    import torch
    from .sampling import sample
    from .schedule import NoiseSchedule
    from .training.trainer import load_for_sampling
    from .utils.image import save_grid
    from .training.trainer import class_names_of, image_shape_of, num_classes_of
    from .samplers.multistep import MULTISTEP_SAMPLERS
    from .samplers.settings import MULTISTEP_STEPS
    from .training.conditioning import guidance_kwargs
    _check_sample_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, cfg, ckpt = load_for_sampling(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    shape = image_shape_of(ckpt, args.checkpoint)
    labels, nrow, what = _sample_labels(args, num_classes_of(ckpt, args.checkpoint), class_names_of(ckpt))
    n = labels.shape[0] if labels is not None else (args.n or 64)
    guide = {} if labels is None else guidance_kwargs(
        labels.to(args.device), model.null_class, 1.0 if args.guidance is None else args.guidance)
    schedule = NoiseSchedule.make(cfg.schedule, cfg.T)
    steps = args.steps          # sample() decides what steps means for the sampler, or refuses
    md = _MODEL_DTYPES[args.model_dtype]
    t0 = time.perf_counter()
    x = sample(model, (n, *shape), schedule=schedule, sampler=args.sampler, steps=steps,
               eta=args.eta, seed=args.seed, prediction_type=cfg.prediction_type, backend=args.backend,
               device=args.device, chunk_size=args.batch_size, compile=args.compile,
               model_dtype=None if md is None else getattr(torch, md), **guide)
    dt = time.perf_counter() - t0
    save_grid(x, args.out, nrow=nrow, scale=max(1, 64 // max(shape[1:])))
    nsteps = steps or (MULTISTEP_STEPS if args.sampler in MULTISTEP_SAMPLERS else cfg.T)
    forward = "" if md is None else f", model forward {args.model_dtype}"
    print(f"sampled {n} images{what} ({args.sampler}, {nsteps} steps, seed {args.seed}{forward}) in {dt:.2f} s "
          f"({n / dt:.1f} images/s, {dt / nsteps * 1e3:.1f} ms/step) -> {args.out}")
    if args.metric and cfg.data in ("digits", "sklearn-digits") and shape == (1, 16, 16) and n >= 2:
        import os
        from .metrics import DigitsMetric
        cache = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "digits_classifier.safetensors")
        real = labels is not None and args.class_ != "none"       # the null class is no digit
        print(DigitsMetric(cache=cache).evaluate(x, labels if real else None))
    return 0


def _check_guidance(w: float) -> None:
    import math
    if not (math.isfinite(w) and w >= 0):
        raise OptionError("--guidance", f"must be a finite number >= 0 (1: the conditional model "
                                        f"alone, 0: the unconditional one), got {w}")


def _sample_labels(args, K, names=None):
    """(labels int64 [n] or None, images per grid row or None, text for the summary line) for
    ``--class`` / ``--guidance`` / ``--n`` on a checkpoint with K classes (None: unconditional);
    ``names``: the checkpoint's class names, if it has them (``--class`` then takes a name too)."""
    import torch
    from .training.conditioning import class_rows
    if K is None:
        for flag, v in (("--class", args.class_), ("--guidance", args.guidance)):
            if v is not None:
                raise OptionError(flag, "the checkpoint is unconditional (trained without --conditional): "
                                        "leave it out")
        return None, None, ""
    if args.guidance is not None:
        _check_guidance(args.guidance)
    w = 1.0 if args.guidance is None else args.guidance
    choice = "all" if args.class_ is None else args.class_.strip().lower()
    if choice == "all":
        per = args.n or 8
        return class_rows(K, per), per, f" ({per} per class, one row per class, guidance {w:g})"
    if choice == "none":
        if args.guidance is not None:
            raise OptionError("--guidance", "--class none samples the unconditional model (the null "
                                            "class): guidance needs a class")
        return torch.full((args.n or 64,), K, dtype=torch.int64), None, " (null class: unconditional)"
    k = _class_index(args.class_.strip(), K, names)
    label = f"{k} ({names[k]})" if names else f"{k}"
    return torch.full((args.n or 64,), k, dtype=torch.int64), None, f" of class {label} (guidance {w:g})"


def _class_index(choice: str, K: int, names) -> int:
    """``--class``'s class: one of the checkpoint's class names (an image folder's sub-folder
    names: looked up first, so folders named "1", "10", "2" mean what they say), else a label
    number in 0..K-1."""
    if names and choice in names:
        return names.index(choice)
    try:
        k = int(choice)
    except ValueError:
        k = -1
    if not 0 <= k < K:
        named = f", or a name: {', '.join(names)}" if names else ""
        raise OptionError("--class", f"must be a class in 0..{K - 1}{named}, 'all' or 'none', got {choice!r}")
    return k


class OptionError(ValueError):
    """A command-line option with a bad value (``option`` is the flag, e.g. ``--n``)."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")


def _check_sample_args(args) -> None:
    if args.n is not None and args.n < 1:
        raise OptionError("--n", f"the number of images must be >= 1, got {args.n}")
    for flag, v in (("--threads", args.threads), ("--batch-size", args.batch_size), ("--steps", args.steps)):
        if v is not None and v < 1:
            raise OptionError(flag, f"must be >= 1 (or left out), got {v}")


def _one_line(e: BaseException) -> str:
    """The error as one line; a training option is named by its flag (--min-snr-gamma)."""
    from .training.config import ConfigError
    if isinstance(e, ConfigError):
        text = f"{_FLAG_ALIASES.get(e.field, '--' + e.field.replace('_', '-'))}: {e.reason}"
    else:
        text = str(e) or type(e).__name__
        if not isinstance(e, (ValueError, TypeError, FileNotFoundError)):   # say what kind it is
            text = f"{type(e).__name__}: {text}"
    return " ".join(text.split())


def _run(args) -> int:
    if args.command == "train":
        return _train_cmd(args)
    if args.command == "sample":
        return _sample_cmd(args)
    from .training.demo import run_demo
    for flag, v in (("--steps", args.steps), ("--threads", args.threads)):
        if v is not None and v < 1:
            raise OptionError(flag, f"must be >= 1 (or left out), got {v}")
    _check_guidance(args.guidance)
    if not 0 <= args.guidance_rescale <= 1:
        raise OptionError("--guidance-rescale", f"must be in [0, 1], got {args.guidance_rescale}")
    return run_demo(out_dir=args.out_dir, steps=args.steps, threads=args.threads, seed=args.seed,
                    reference=not args.no_reference, guidance=args.guidance, guidance_rescale=args.guidance_rescale)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug or os.environ.get("DDPM_FAST_DEBUG", "") not in ("", "0"):
        return _run(args)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"ddpm-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:      # one line for the user; --debug keeps the traceback
        print(f"ddpm-fast {args.command}: error: {_one_line(e)} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
