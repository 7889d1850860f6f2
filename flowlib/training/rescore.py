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
trainer's, so ``--samples 1`` gives back the run's own test number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import atomic_write_text, load_checkpoint, load_model
from ..files import shown_path
from .config import TrainResult, load_dataset
from .distributed import device_name, resolve_device
from .evaluate import EVAL_SEED, log_likelihood_sum
from ..flow import value_checks
from ..metrics import bits_per_dim

__all__ = ["Rescore", "rescore", "main"]


@dataclass
class Rescore:
    """What `rescore` measured (the JSON file it writes holds exactly these fields)."""

    run: str
    run_id: str
    samples: int
    count: int
    test_bpd_single: float
    test_bpd: float
    test_nats: float
    seconds: float
    device: str
    torch_version: str
    command: str


def rescore(run_dir: str | Path, samples: int, device: str = "auto", progress: bool = True) -> Rescore:
    """The test bits/dim of the run in ``run_dir`` (its ``best.pt``) with ``samples`` noise draws per image.

    Raises a ValueError when ``samples < 1`` or when the folder's
    ``results.json`` and ``best.pt`` do not come from the same finished run.

    >>> rescore("runs/nice-mnist-cpu", samples=0)
    Traceback (most recent call last):
    ...
    ValueError: samples must be at least 1, got 0
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    run_dir = Path(run_dir)
    results_file = run_dir / "results.json"
    if not results_file.exists():
        raise ValueError(f"{run_dir} holds no results.json: only a finished run can be scored again")
    result = TrainResult.from_dict(json.loads(results_file.read_text()))
    best = load_checkpoint(run_dir / "best.pt")
    if best.get("run_id") != result.run_id or result.test_bpd is None:
        raise ValueError(f"{run_dir}: best.pt and results.json do not come from the same finished run")
    target = resolve_device(device)
    model, config = load_model(run_dir / "best.pt", map_location=target)
    test = load_dataset(config)["test"]
    chunks = test.split(config.eval_batch_size)
    total = torch.zeros((), dtype=torch.float64, device=target)
    start = time.perf_counter()
    with value_checks(False):
        for i, chunk in enumerate(chunks):
            total += log_likelihood_sum(model, chunk, len(chunk), seed=EVAL_SEED + i, samples=samples)
            if progress:
                print(f"\r{run_dir.name}: {i + 1}/{len(chunks)} batches, K = {samples}", end="", file=sys.stderr,
                      flush=True)
    if progress:
        print(file=sys.stderr)
    nats = -(total / test.shape[0]).item()
    return Rescore(
        run=shown_path(run_dir), run_id=result.run_id,
        samples=samples, count=test.shape[0], test_bpd_single=result.test_bpd,
        test_bpd=float(bits_per_dim(-nats, model.num_dims)), test_nats=nats,
        seconds=time.perf_counter() - start, device=device_name(target), torch_version=torch.__version__,
        command=f"python -m flowlib.training.rescore {run_dir} --samples {samples}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flowlib.training.rescore", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a finished run folder (runs/MODEL-DATASET-PRESET...)")
    p.add_argument("--samples", type=int, default=16, help="dequantization samples per test image (K)")
    p.add_argument("--out", help="write the result as JSON here (default: only print it)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        r = rescore(args.run_dir, args.samples, args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{r.run}: test {r.test_bpd:.4f} bits/dim with K = {r.samples} "
          f"(one sample: {r.test_bpd_single:.4f}; {r.count} images, {r.seconds:.0f} s on {r.device})")
    if args.out:
        atomic_write_text(json.dumps(dataclasses.asdict(r), indent=2), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
