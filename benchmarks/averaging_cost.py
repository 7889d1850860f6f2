"""What does Polyak averaging (``--average-epochs``) cost a training step? With and without, interleaved.

Each cpu preset's model (its batch size, precision and compile setting) takes Adam steps on the same MNIST
batch, in alternating blocks of ``--block`` plain steps (`flowlib.training.fit.train_step`) and ``--block``
steps each followed by the average's update (`flowlib.training.averaging.WeightAverage.update`), so both see
the same machine load, and a plain step never follows an update (which could have evicted its weights from
the caches) except at the start of a block; the update is also timed alone. Medians over ``--steps`` steps
of each kind. (An earlier version alternated single steps: ``results/averaging_cost-pairs.md``.)

    .venv/bin/python benchmarks/averaging_cost.py           # writes benchmarks/results/averaging_cost.*
    .venv/bin/python benchmarks/averaging_cost.py --tag repeat --steps 80   # averaging_cost-repeat.*
    .venv/bin/python benchmarks/averaging_cost.py --quick   # a few steps, nothing written
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from flowlib.flow import initialize_from_data, value_checks  # noqa: E402
from flowlib.training.averaging import WeightAverage, average_beta  # noqa: E402
from flowlib.training.config import build_model, load_dataset, make_config  # noqa: E402
from flowlib.training.fit import make_optimizer, train_step  # noqa: E402
from flowlib.training.precision import resolve_precision  # noqa: E402


def measure(model_name: str, steps: int, block: int) -> dict:
    config = make_config(model_name, "cpu")
    precision = resolve_precision(config.precision, "cpu")
    images, _ = common.load_mnist_images(config.batch_size)
    x = images.flatten(1) if model_name == "nice" else images
    torch.manual_seed(0)
    model = build_model(config)
    initialize_from_data(model, x)
    optimizer = make_optimizer(model, config.lr)
    average = WeightAverage(model, average_beta(1, load_dataset(config)["train"].shape[0] // config.batch_size))

    def step() -> None:
        train_step(model, optimizer, x, precision=precision, compile=config.compile).item()

    times: dict[str, list[float]] = {"plain": [], "averaged": [], "update": []}
    with value_checks(False):  # as in the trainer's loop
        step()  # warm-up (and the compile, where the preset compiles)
        average.update(model)
        for _ in range(max(1, steps // block)):
            for _ in range(block):
                t0 = time.perf_counter()
                step()
                times["plain"].append(time.perf_counter() - t0)
            for _ in range(block):
                t0 = time.perf_counter()
                step()
                t1 = time.perf_counter()
                average.update(model)
                t2 = time.perf_counter()
                times["averaged"].append(t2 - t0)
                times["update"].append(t2 - t1)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model_name, "precision": precision, "compile": config.compile, "batch_size": config.batch_size,
            "parameters": sum(p.numel() for p in model.parameters()), "steps": len(times["plain"]), "block": block,
            "plain_ms": 1e3 * median["plain"], "averaged_ms": 1e3 * median["averaged"],
            "update_ms": 1e3 * median["update"], "cost": median["averaged"] / median["plain"] - 1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["nice", "realnvp", "glow"])
    p.add_argument("--steps", type=int, default=40, help="steps of each kind")
    p.add_argument("--block", type=int, default=10, help="steps of one kind in a row")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tag", default="", help="results go to averaging_cost-TAG.* (a repeat kept beside the first)")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    rows = [measure(m, 2 if args.quick else args.steps, 1 if args.quick else args.block) for m in args.models]
    info = common.machine_info()
    table = common.format_table(
        ["model (cpu preset)", "precision", "compiled", "weights", "step (ms)", "step + update (ms)", "update (ms)",
         "cost"],
        [[r["model"], r["precision"], r["compile"], f"{r['parameters']:,}", f"{r['plain_ms']:.1f}",
          f"{r['averaged_ms']:.1f}", f"{r['update_ms']:.2f}", f"{100 * r['cost']:+.1f}%"] for r in rows])
    markdown = (f"Polyak averaging's cost per training step of each cpu preset, median of {rows[0]['steps']} "
                f"steps of each kind in alternating blocks of {rows[0]['block']} "
                f"({info['cpu']}, {info['threads']} threads, torch {info['torch']}, {info['time']})"
                f"\n\n{table}")
    print(markdown)
    if not args.quick:
        name = f"averaging_cost-{args.tag}" if args.tag else "averaging_cost"
        given = argv if argv is not None else sys.argv[1:]
        command = " ".join([".venv/bin/python benchmarks/averaging_cost.py", *given])
        common.write_results(name, {"machine": info, "rows": rows}, markdown + f"\n\nCommand: `{command}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
