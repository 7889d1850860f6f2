"""Channels-last against NCHW, end to end: the training step of the RealNVP and Glow ``cpu`` presets' models.

flowlib's conv nets (`flowlib.nets.ResidualConvNet`, `flowlib.nets.GlowConvNet`) keep their weights in the
channels-last memory layout, which the CPU's convolution kernels prefer; the flow around them (masks,
squeezes, ActNorm, the 1x1 convolution, the log-dets) works on ordinary NCHW tensors, so every coupling
converts the layout on the way into its net and back. This script measures whether that pays, end to end:
one Adam step (`flowlib.training.fit.train_step`) of the same model in three layouts, interleaved on the
same MNIST batch (rotating order, median over rounds; value checks off as in the trainer):

* ``nchw``: every weight and activation in the ordinary layout (the nets converted back);
* ``nets``: the nets channels-last, the flow NCHW (what flowlib does);

in fp32 and in bf16 autocast. (Handing the batch in channels-last as well changes nothing here: with one
channel, MNIST's two layouts hold the same bytes in the same order.)

    .venv/bin/python benchmarks/memory_format.py            # writes benchmarks/results/memory_format.*
    .venv/bin/python benchmarks/memory_format.py --quick    # a few steps, nothing written
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from flowlib.flow import initialize_from_data, value_checks  # noqa: E402
from flowlib.training.config import build_model, make_config  # noqa: E402
from flowlib.training.fit import make_optimizer, train_step  # noqa: E402

LAYOUTS = ("nchw", "nets")


def measure(model_name: str, precision: str, rounds: int, steps: int) -> dict:
    """Samples/s of each layout (median over rounds of ``steps`` steps), and each against ``nchw``."""
    config = make_config(model_name, "cpu", precision=precision)
    images, source = common.load_mnist_images(config.batch_size)
    torch.manual_seed(0)
    base = build_model(config)
    initialize_from_data(base, images)
    models = {layout: copy.deepcopy(base) for layout in LAYOUTS}
    models["nchw"].to(memory_format=torch.contiguous_format)
    optimizers = {layout: make_optimizer(m, config.lr) for layout, m in models.items()}
    seconds: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    with value_checks(False):
        for layout in LAYOUTS:  # warm-up: the first step of each allocates and picks kernels
            train_step(models[layout], optimizers[layout], images, precision=precision).item()
        for r in range(rounds):
            for layout in LAYOUTS[r % 2:] + LAYOUTS[:r % 2]:
                start = time.perf_counter()
                for _ in range(steps):
                    train_step(models[layout], optimizers[layout], images, precision=precision).item()
                seconds[layout].append((time.perf_counter() - start) / steps)
    median = {layout: statistics.median(v) for layout, v in seconds.items()}
    return {"model": model_name, "precision": precision, "batch_size": config.batch_size, "data": source,
            "rounds": rounds,
            "steps_per_round": steps,
            "samples_per_s": {layout: config.batch_size / median[layout] for layout in LAYOUTS},
            "speed_vs_nchw": {layout: median["nchw"] / median[layout] for layout in LAYOUTS}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["realnvp", "glow"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    rounds, steps = (3, 1) if args.quick else (args.rounds, args.steps)
    rows = [measure(m, prec, rounds, steps) for m in args.models for prec in args.precisions]
    info = common.machine_info()
    table = common.format_table(
        ["model (cpu preset)", "precision", "batch", *[f"{lay} samples/s" for lay in LAYOUTS],
         "nets / nchw"],
        [[r["model"], r["precision"], r["batch_size"], *[f"{r['samples_per_s'][lay]:.0f}" for lay in LAYOUTS],
          f"{r['speed_vs_nchw']['nets']:.2f}"] for r in rows])
    markdown = (f"Memory layout of the conv nets, end to end: one training step of each cpu preset's model, "
                f"median of {rounds} interleaved rounds of {steps} steps ({info['cpu']}, {info['threads']} threads, "
                f"torch {info['torch']}, {info['time']}). nchw: everything in the ordinary layout; nets: the nets "
                f"channels-last, the flow NCHW (flowlib). Data: {rows[0]['data']}.\n\n{table}\n\n"
                f"Command: `.venv/bin/python benchmarks/memory_format.py`")
    print(markdown)
    if not args.quick:
        common.write_results("memory_format", {"benchmark": "memory_format", "machine": info, "rows": rows},
                             markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
