"""The trainer's command line: ``python -m flowlib.training MODEL --preset {paper,cpu,quick} [--resume] ...``.

Exit status (`EXIT_STATUS`, shown by ``--help``): 0 finished, 130 stopped by
Ctrl-C/SIGTERM (resume with ``--resume``), 2 bad settings, 3 the loss
diverged, 4 a run-folder or file problem (not writable, in use, damaged
checkpoint). Every error is one line on stderr naming what was expected and
what came (`flowlib.training.errors.print_error`).
"""

from __future__ import annotations

import argparse
import os

from .checkpoint import CheckpointError
from .errors import print_error
from .config import make_config
from .presets import MODELS
from .train import TrainingDiverged, train

__all__ = ["main", "EXIT_STATUS"]

_DESCRIPTION = ("Train NICE, RealNVP or Glow on MNIST, or NICE or RealNVP or a 2D toy density by maximum likelihood "
                "(see flowlib.training.train).")

#: The ``--help`` epilog: what each exit status means.
EXIT_STATUS = """exit status:
  0    finished (results.json written), or stopped by --max-steps or --max-minutes (continue with --resume)
  130  stopped by Ctrl-C or SIGTERM after saving a checkpoint: continue with --resume
  2    bad settings (an invalid option value, no CUDA GPU, MNIST not found)
  3    the loss diverged (NaN or Inf); the last good checkpoint is kept
  4    a run-folder or file problem (not writable, in use by another trainer, a damaged checkpoint)"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flowlib.training", description=_DESCRIPTION, epilog=EXIT_STATUS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=list(MODELS))
    p.add_argument("--dataset", default="mnist", help="mnist or a 2D toy density name")
    p.add_argument("--preset", default="cpu", choices=["paper", "cpu", "quick"])
    p.add_argument("--out", help="run folder (default runs/MODEL-DATASET-PRESET[-changed fields])")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float, help="L2 penalty added to each gradient (Adam's weight_decay)")
    p.add_argument("--dropout", type=float,
                   help="nice only: dropout rate of the coupling nets' hidden units in training (default 0)")
    p.add_argument("--hidden-bias", choices=["zero", "pytorch"],
                   help="nice only: its coupling nets' hidden biases start at zero (NICE's presets, as its released "
                        "code) or at PyTorch's default, uniform in +-1/sqrt(inputs)")
    p.add_argument("--optimizer", choices=["adam", "rmsprop_momentum"],
                   help="Adam (the presets), or RMSProp with momentum as NICE's released code trains")
    p.add_argument("--schedule", choices=["constant", "cosine", "exponential"],
                   help="learning rate: constant, cosine to 0, or divided by 1.0005 per update down to a tenth")
    p.add_argument("--min-lr", type=float, help="where the cosine schedule ends (default 0)")
    p.add_argument("--warmup-epochs", type=float,
                   help="raise the learning rate linearly over this many epochs first (default 0: no warm-up)")
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="bf16 autocast for the nets where the hardware has it (auto, the default), or not")
    p.add_argument("--matmul-precision", choices=["fp32", "tf32"],
                   help="float32 matmuls and convolutions: true fp32 (the default) or TF32 on GPUs that have it")
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps in total")
    p.add_argument("--max-minutes", type=float,
                   help="stop (with a checkpoint; continue with --resume) after this many minutes of this call")
    p.add_argument("--eval-samples", type=int,
                   help="importance samples per test image in the final evaluation (default 1: the plain bound)")
    p.add_argument("--average-epochs", type=float,
                   help="score and keep a Polyak average of the weights over about this many epochs "
                        "(default: the preset's, one epoch for NICE's cpu preset; 0: none)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--compile", action="store_true", help="compile each step's loss with torch.compile (inductor)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m flowlib.training MODEL [--dataset mnist] [--preset cpu] [--resume] ...``; returns the exit status."""
    args = _parser().parse_args(argv)
    fields = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                  optimizer=args.optimizer, schedule=args.schedule, min_lr=args.min_lr,
                  warmup_epochs=args.warmup_epochs,
                  seed=args.seed, precision=args.precision, matmul_precision=args.matmul_precision,
                  max_steps=args.max_steps, max_minutes=args.max_minutes, device=args.device,
                  out_dir=args.out, eval_samples=args.eval_samples, compile=args.compile or None,
                  average_epochs=args.average_epochs)
    try:
        net_kwargs = {k: v for k, v in (("dropout", args.dropout), ("zero_hidden_bias", args.hidden_bias)) if v is not None}
        if net_kwargs:
            flags = " and ".join(f"--{k.replace('zero_', '').replace('_', '-')}" for k in net_kwargs)
            verb = "are" if len(net_kwargs) > 1 else "is"
            if args.model != "nice":
                raise ValueError(f"{flags} {verb} for nice (its coupling MLPs), got model {args.model!r}")
            if args.dataset != "mnist":
                raise ValueError(f"{flags} {verb} for NICE on MNIST (its 5 x 1000 coupling MLPs), "
                                 f"got dataset {args.dataset!r}")
            if "zero_hidden_bias" in net_kwargs:
                net_kwargs["zero_hidden_bias"] = args.hidden_bias == "zero"
            preset_kwargs = make_config(args.model, args.preset, args.dataset).model_kwargs
            fields["model_kwargs"] = {**preset_kwargs, **net_kwargs}
        overrides = {k: v for k, v in fields.items() if v is not None}
        if args.average_epochs == 0:
            overrides["average_epochs"] = None  # 0 turns the preset's average off
        config = make_config(args.model, args.preset, args.dataset, **overrides)
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print_error(e)
        return 2
    except TrainingDiverged as e:
        print_error(e)
        return 3
    except (CheckpointError, OSError) as e:
        print_error(e)
        return 4
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.summary())
    return 130 if result.interrupted else 0
