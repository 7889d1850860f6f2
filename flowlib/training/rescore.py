"""Score a finished run's best model again on the test set, with the importance-weighted bound.

The trainer's test number is the dequantization bound with one noise sample
per image, :math:`\\log p(x + u) - \\log q(u \\mid x)` (chapter 4; with
uniform noise :math:`q = 1`). With :math:`K` samples per image,

.. math:: \\log P(x) \\;\\ge\\; \\mathbb E\\Big[\\log \\frac{1}{K}\\sum_{k=1}^{K}
   \\frac{p(x + u_k)}{q(u_k \\mid x)}\\Big] \\;\\ge\\;
   \\mathbb E\\big[\\log p(x + u) - \\log q(u \\mid x)\\big],

and the middle term rises with :math:`K` towards :math:`\\log P(x)` (Burda
et al., "Importance Weighted Autoencoders", ICLR 2016, arXiv:1509.00519,
https://arxiv.org/abs/1509.00519; for dequantization, Hoogeboom et al.,
"Learning Discrete Distributions by Dequantization", 2020,
arXiv:2001.11235, https://arxiv.org/abs/2001.11235). The difference between
the two numbers is how much of a reported bits/dim is the bound's slack.

    python -m flowlib.training.rescore runs/realnvp-mnist-cpu --samples 16
    python -m flowlib.training.rescore runs/glow-mnist-cpu --samples 16 --out results/glow-mnist-cpu-is16.json

The test images, their batches and the evaluation seed of each batch are the
trainer's, so ``--samples K`` with the run's own K (its ``eval_samples``,
1 unless trained with ``--eval-samples``) gives back the run's own test
number; the output shows both numbers, each with its K.

A run whose final evaluation was stopped (``checkpoint.pt`` says every epoch
is done, ``best.pt`` is the run's, but there is no ``results.json``) is
scored from ``best.pt``; its own number is then unknown. A folder whose
training is not finished is refused (continue it with the trainer's
``--resume``), and so is one whose files are damaged or do not belong
together: ``best.pt`` must carry the run id and config of ``results.json``
(or of ``checkpoint.pt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (CheckpointError, atomic_write_text, load_checkpoint, load_config, load_results,
                         model_from_checkpoint)
from .errors import print_error
from ..files import shown_path
from .config import TrainConfig, config_differences, load_dataset
from .distributed import device_name, resolve_device
from .evaluate import EVAL_SEED, log_likelihood_sum
from ..flow import value_checks
from ..metrics import bits_per_dim

__all__ = ["Rescore", "rescore", "main"]


@dataclass
class Rescore:
    """What `rescore` measured (the JSON file it writes holds exactly these fields).

    ``test_bpd`` is the bound with ``samples`` draws per image. ``run_test_bpd``
    is the run's own test number (``results.json``), made with ``run_samples``
    draws per image; None when the run's final evaluation was stopped.
    ``test_bpd_single`` is the one-sample bound: this score when ``samples``
    is 1, else the run's own number when its K was 1, else None (unknown).
    """

    run: str
    run_id: str
    samples: int
    count: int
    test_bpd: float
    test_nats: float
    run_test_bpd: float | None
    run_samples: int
    test_bpd_single: float | None
    seconds: float
    device: str
    torch_version: str
    command: str


@dataclass
class _Run:
    """A run folder's files, checked to belong together: its id, config, own test number and best checkpoint."""

    run_id: str
    config: TrainConfig
    test_bpd: float | None
    best: dict[str, Any]


def _from_results(run_dir: Path) -> tuple[Path, str, dict[str, Any], float]:
    """``(results.json, run id, config, test number)`` of a finished run."""
    path = run_dir / "results.json"
    result = load_results(path)
    if result.test_bpd is None:
        raise CheckpointError(f"{path} records no test number: the run is not finished; continue it with the "
                              f"trainer's --resume (same settings, --out {run_dir})")
    return path, result.run_id, result.config, result.test_bpd


def _from_checkpoint(run_dir: Path) -> tuple[Path, str, dict[str, Any], None]:
    """``(checkpoint.pt, run id, config, None)`` of a run whose training is done but whose final test was stopped."""
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"{run_dir} holds neither results.json nor checkpoint.pt: "
                              f"it is not a trainer's run folder")
    ckpt = load_checkpoint(path)
    try:
        epoch, epochs, run_id = ckpt["state"]["epoch"], ckpt["config"]["epochs"], ckpt["state"]["run_id"]
        finished = epoch >= epochs
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path} holds no valid training state ({e!r}); it is damaged") from e
    if not finished:
        raise CheckpointError(f"{run_dir} is not finished: it has done {epoch} of its {epochs} epochs; continue it "
                              f"with the trainer's --resume (same settings, --out {run_dir}), then score it")
    return path, run_id, ckpt["config"], None


def _read_run(run_dir: Path, map_location: torch.device) -> _Run:
    """The run in ``run_dir``, or a `CheckpointError` naming the missing, damaged or mismatched file."""
    source, run_id, saved, own = (_from_results if (run_dir / "results.json").exists() else _from_checkpoint)(run_dir)
    config = load_config(saved, source)
    best_path = run_dir / "best.pt"
    best = load_checkpoint(best_path, map_location)
    if best.get("run_id") != run_id:
        raise CheckpointError(f"{best_path} and {source.name} do not come from the same run "
                              f"(run ids {best.get('run_id')!r} and {run_id!r})")
    diff = config_differences(load_config(best.get("config"), best_path), config)
    if diff:
        raise CheckpointError(f"{best_path} and {source.name} disagree in config fields {diff}; "
                              f"they do not belong together")
    return _Run(run_id=run_id, config=config, test_bpd=own, best=best)


def _score(model: nn.Module, config: TrainConfig, samples: int, device: torch.device, name: str,
           progress: bool) -> tuple[float, int]:
    """``(nats per image, images)`` on the test set: the trainer's batches and seeds, ``samples`` draws each."""
    test = load_dataset(config)["test"]
    chunks = test.split(config.eval_batch_size)
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with value_checks(False):
            for i, chunk in enumerate(chunks):
                total += log_likelihood_sum(model, chunk, len(chunk), seed=EVAL_SEED + i, samples=samples)
                if progress:
                    print(f"\r{name}: {i + 1}/{len(chunks)} batches, K = {samples}", end="", file=sys.stderr,
                          flush=True)
    finally:
        if progress:
            print(file=sys.stderr)
    return -(total / test.shape[0]).item(), test.shape[0]


def rescore(run_dir: str | Path, samples: int, device: str = "auto", progress: bool = True) -> Rescore:
    """The test bits/dim of the run in ``run_dir`` (its ``best.pt``) with ``samples`` noise draws per image.

    Raises a ValueError when ``samples < 1`` or ``run_dir`` is not a folder,
    and a `CheckpointError` (naming the file) when the run is not finished,
    or its files are missing, damaged or do not come from the same run.

    >>> rescore("runs/nice-mnist-cpu", samples=0)
    Traceback (most recent call last):
    ...
    ValueError: samples must be at least 1, got 0
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a folder: give a run folder (runs/MODEL-DATASET-PRESET...)")
    target = resolve_device(device)
    run = _read_run(run_dir, target)
    model, _ = model_from_checkpoint(run.best, run_dir / "best.pt", target)
    start = time.perf_counter()
    nats, count = _score(model, run.config, samples, target, run_dir.name, progress)
    test_bpd = float(bits_per_dim(-nats, model.num_dims))
    own_k = run.config.eval_samples
    if samples == 1:
        single = test_bpd
    else:  # the run's own number is the one-sample bound only when the run used K = 1
        single = run.test_bpd if own_k == 1 else None
    return Rescore(
        run=shown_path(run_dir), run_id=run.run_id, samples=samples, count=count, test_bpd=test_bpd,
        test_nats=nats, run_test_bpd=run.test_bpd, run_samples=own_k, test_bpd_single=single,
        seconds=time.perf_counter() - start, device=device_name(target), torch_version=torch.__version__,
        command=f"python -m flowlib.training.rescore {run_dir} --samples {samples}")


#: The ``--help`` epilog: what each exit status means.
EXIT_STATUS = """exit status:
  0    scored (and --out written)
  2    bad arguments: --samples below 1, RUN_DIR not a folder, --out not writable or a folder,
       an unknown --device, MNIST not found
  4    the run folder's files are missing, damaged, unfinished or do not belong together
       (or a file could not be read or written)
  130  stopped by Ctrl-C"""


def _check_out(out: Path) -> None:
    """Raise ValueError now, before any work, when ``--out`` cannot be written as a file."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / 'rescore.json'}")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"--out {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: no permission to write in {folder}")


def _report(r: Rescore) -> str:
    """The line printed for a score: this number with its K, and the run's own with its K (or unknown)."""
    own = ("unknown (the run's final evaluation was stopped before results.json was written)"
           if r.run_test_bpd is None else f"{r.run_test_bpd:.4f} with K = {r.run_samples}")
    return (f"{r.run}: test {r.test_bpd:.4f} bits/dim with K = {r.samples}; the run's own number: {own} "
            f"({r.count} images, {r.seconds:.0f} s on {r.device})")


def main(argv: list[str] | None = None) -> int:
    """``python -m flowlib.training.rescore RUN_DIR [--samples K] [--out FILE]``; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m flowlib.training.rescore", description=__doc__.split("\n")[0],
                                epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (runs/MODEL-DATASET-PRESET...)")
    p.add_argument("--samples", type=int, default=16, help="dequantization samples per test image (K)")
    p.add_argument("--out", help="write the result as JSON here (default: only print it)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        if args.out:
            _check_out(Path(args.out))
        r = rescore(args.run_dir, args.samples, args.device)
        print(_report(r))
        if args.out:
            atomic_write_text(json.dumps(dataclasses.asdict(r), indent=2), Path(args.out))
    except (ValueError, FileNotFoundError) as e:
        print_error(e)
        return 2
    except (CheckpointError, OSError) as e:
        print_error(e)
        return 4
    except KeyboardInterrupt:
        print("error: stopped by Ctrl-C; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
