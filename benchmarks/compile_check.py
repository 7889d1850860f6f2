"""Does ``torch.compile`` make the cpu presets' training step faster? Eager against compiled, interleaved.

Each preset's model (``cpu`` preset, its batch size, fp32) takes Adam steps on the same MNIST batch, eager and
compiled (`flowlib.training.fit.train_step` with ``compile=True``), with value checks off as in the
trainer's loop, alternating so that both see the same
machine load; the compile time (the first compiled step) is reported on its own, since a run pays it once.

    .venv/bin/python benchmarks/compile_check.py               # writes benchmarks/results/compile_check.*
    .venv/bin/python benchmarks/compile_check.py --precision bf16   # bf16 autocast: results/compile_check-bf16.*
    .venv/bin/python benchmarks/compile_check.py --quick       # a few steps, nothing written
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


def measure(model_name: str, steps: int, precision: str = "fp32") -> dict:
    with value_checks(False):  # as in the trainer's loop: no host syncs for input checks
        return _measure(model_name, steps, precision)


def _measure(model_name: str, steps: int, precision: str) -> dict:
    config = make_config(model_name, "cpu", precision=precision)
    images, _ = common.load_mnist_images(config.batch_size)
    x = images.flatten(1) if model_name == "nice" else images
    torch.manual_seed(0)
    eager = build_model(config)
    initialize_from_data(eager, x)
    compiled = copy.deepcopy(eager)
    opt_e, opt_c = make_optimizer(eager, config.lr), make_optimizer(compiled, config.lr)
    start = time.perf_counter()
    train_step(compiled, opt_c, x, precision=precision, compile=True).item()
    compile_s = time.perf_counter() - start
    train_step(eager, opt_e, x, precision=precision).item()  # warm-up
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(steps):
        for kind, model, opt in (("eager", eager, opt_e), ("compiled", compiled, opt_c)):
            t0 = time.perf_counter()
            train_step(model, opt, x, precision=precision, compile=kind == "compiled").item()
            times[kind].append(time.perf_counter() - t0)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model_name, "precision": precision, "batch_size": config.batch_size, "steps": steps,
            "compile_seconds": compile_s,
            "eager_samples_per_s": config.batch_size / median["eager"],
            "compiled_samples_per_s": config.batch_size / median["compiled"],
            "speedup": median["eager"] / median["compiled"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["nice", "realnvp", "glow"])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    rows = [measure(m, 2 if args.quick else args.steps, args.precision) for m in args.models]
    info = common.machine_info()
    table = common.format_table(
        [f"model (cpu preset, {args.precision})", "batch", "eager samples/s", "compiled samples/s", "compiled / eager",
         "compile time (s)"],
        [[r["model"], r["batch_size"], f"{r['eager_samples_per_s']:.0f}", f"{r['compiled_samples_per_s']:.0f}",
          f"{r['speedup']:.2f}", f"{r['compile_seconds']:.0f}"] for r in rows])
    markdown = (f"torch.compile (inductor) against eager, training step of each cpu preset's model, "
                f"{args.precision}, median of {rows[0]['steps']} interleaved steps ({info['cpu']}, {info['threads']} threads, torch "
                f"{info['torch']}, {info['time']})\n\n{table}")
    print(markdown)
    if not args.quick:
        name = "compile_check" if args.precision == "fp32" else f"compile_check-{args.precision}"
        common.write_results(name, {"machine": info, "rows": rows}, markdown + "\n\nCommand: `.venv/bin/python "
                             f"benchmarks/compile_check.py --precision {args.precision}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
