"""Does bf16 autocast cost likelihood? The MNIST presets in bf16 and fp32 at equal steps.

Each model is built from its ``cpu`` preset with the same seed (so both runs
start from the same weights and see the same batches), trained with
`flowlib.training.fit.fit` for the same number of steps in each precision, and
evaluated in fp32 on the first 5,000 validation digits. The question the
book's default (``precision="auto"``) rests on: is the bf16 run within
0.01 bits/dim of the fp32 run?

    .venv/bin/python benchmarks/precision_check.py            # writes benchmarks/results/precision_check.*
    .venv/bin/python benchmarks/precision_check.py --quick    # seconds, nothing written
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from flowlib.training.config import build_model, load_dataset, make_config  # noqa: E402
from flowlib.training.fit import fit  # noqa: E402
from flowlib.training.precision import resolve_precision


def run(model: str, precision: str, steps: int, n_valid: int, seed: int = 0) -> dict:
    config = make_config(model, "cpu", seed=seed)
    data = load_dataset(config)
    torch.manual_seed(seed)
    net = build_model(config)
    start = time.perf_counter()
    result = fit(net, data["train"], steps=steps, batch_size=config.batch_size, lr=config.lr, betas=config.betas,
                 eps=config.eps, weight_decay=config.weight_decay, clip_grad=config.clip_grad,
                 valid=data["valid"][:n_valid], eval_every=max(1, steps // 4), seed=seed, precision=precision)
    return {"model": model, "precision": precision, "steps": steps, "batch_size": config.batch_size,
            "valid_steps": result.valid_steps, "valid_bpd": result.valid_loss,
            "final_train_bpd": sum(result.train_loss[-50:]) / len(result.train_loss[-50:]),
            "seconds": time.perf_counter() - start, "samples_per_s": steps * config.batch_size / result.seconds}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nice-steps", type=int, default=1250)
    p.add_argument("--realnvp-steps", type=int, default=300)
    p.add_argument("--valid", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.nice_steps, args.realnvp_steps, args.valid = 4, 2, 200
    common.setup_threads(args.threads)
    if resolve_precision("auto", "cpu") != "bf16":
        print("note: this CPU has no native bf16; the bf16 rows run emulated and slowly")
    runs = []
    for model, steps in (("nice", args.nice_steps), ("realnvp", args.realnvp_steps)):
        for precision in ("bf16", "fp32"):
            r = run(model, precision, steps, args.valid)
            runs.append(r)
            print(f"{model:8s} {precision}: valid bits/dim {['%.4f' % v for v in r['valid_bpd']]} at steps "
                  f"{r['valid_steps']}, {r['samples_per_s']:.0f} samples/s", flush=True)
    rows = []
    for model in ("nice", "realnvp"):
        b, f = [r for r in runs if r["model"] == model]
        rows.append([model, b["steps"], f"{b['valid_bpd'][-1]:.4f}", f"{f['valid_bpd'][-1]:.4f}",
                     f"{b['valid_bpd'][-1] - f['valid_bpd'][-1]:+.4f}", f"{b['samples_per_s']:.0f}",
                     f"{f['samples_per_s']:.0f}"])
    table = common.format_table(["model (cpu preset)", "steps", "valid bpd bf16", "valid bpd fp32", "bf16 - fp32",
                                 "bf16 samples/s*", "fp32 samples/s*"], rows)
    table += "\n\n*samples/s over the whole fit, validation passes included."
    print(table)
    result = {"benchmark": "precision_check", "machine": common.machine_info(), "valid_digits": args.valid,
              "runs": runs}
    if not args.quick:
        info = result["machine"]
        md = (f"bf16 autocast against fp32 at equal steps, cpu presets, same seed and batches; validation on the "
              f"first {args.valid} validation digits, evaluated in fp32 ({info['cpu']}, {info['threads']} threads, "
              f"torch {info['torch']}, {info['time']})\n\n{table}")
        common.write_results("precision_check", result, md)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
