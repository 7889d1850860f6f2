"""The trainer's command line: ``python -m flowlib.training MODEL --preset {paper,cpu,quick} [--resume] ...``.

Exit status: 0 finished, 130 stopped by Ctrl-C/SIGTERM (resume with
``--resume``), 2 bad settings, 3 the loss diverged, 4 a run-folder problem
(not writable, in use, damaged checkpoint). Every error is one line naming
what was expected and what came.
"""

from __future__ import annotations

import argparse
import os
import sys

from .checkpoint import CheckpointError
from .config import MODELS, make_config
from .train import TrainingDiverged, train

__all__ = ["main"]

_DESCRIPTION = "Train NICE, RealNVP or Glow on MNIST, or NICE or RealNVP or a 2D toy density by maximum likelihood (see flowlib.training.train)."


def main(argv: list[str] | None = None) -> int:
    """``python -m flowlib.training MODEL [--dataset mnist] [--preset cpu] [--resume] ...``"""
    p = argparse.ArgumentParser(prog="python -m flowlib.training", description=_DESCRIPTION)
    p.add_argument("model", choices=list(MODELS))
    p.add_argument("--dataset", default="mnist", help="mnist or a 2D toy density name")
    p.add_argument("--preset", default="cpu", choices=["paper", "cpu", "quick"])
    p.add_argument("--out", help="run folder (default runs/MODEL-DATASET-PRESET[-changed fields])")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="bf16 autocast for the nets where the hardware has it (auto, the default), or not")
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps in total")
    p.add_argument("--eval-samples", type=int,
                   help="importance samples per test image in the final evaluation (default 1: the plain bound)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    fields = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                  seed=args.seed, precision=args.precision, max_steps=args.max_steps, device=args.device,
                  out_dir=args.out, eval_samples=args.eval_samples)
    try:
        config = make_config(args.model, args.preset, args.dataset,
                             **{k: v for k, v in fields.items() if v is not None})
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.summary())
    return 130 if result.interrupted else 0
