"""bf16 autocast against fp32 at equal training time, 3 seeds, for each MNIST ``cpu`` preset's model.

Equal *steps* (``precision_check.py``) asks whether bf16 costs likelihood per
step; a budget is wall time, and bf16 makes more steps in it where the CPU has
native bf16. This script answers the budget's question in two phases:

1. **Throughput.** For each model, one fp32 and one bf16 copy of the same
   initial weights train on the same MNIST batches, interleaved in one
   process (``common.interleaved``: rotating order, median over rounds); the
   speed ratio ``r = bf16 samples/s / fp32 samples/s`` is the median of the
   per-round ratios, which cancels load that drifts between rounds.
2. **Equal time.** For each seed, fp32 trains ``N`` steps and bf16
   ``round(r N)`` steps: the same wall time on a quiet machine, by
   construction, however busy the machine is while the runs train (their
   own wall times are recorded but not used). Each run uses the preset's
   batch size, optimizer and learning-rate schedule (cosine to 0 over its own
   steps, as the preset does over its epochs). Validation bits/dim on the
   first ``--valid`` validation digits are measured in fp32 (the same
   function for both runs, so the comparison is of the trained weights) at a
   quarter, half, three quarters and all of each run's budget, so the table
   shows whether the ranking at the end of the short budget is the ranking
   all the way along; the bf16 run is also scored under bf16 at the end.

``N`` is the short budget per model (``--steps nice=1500,realnvp=600,glow=1500``
by default: about 4 minutes of fp32 training each on 2 cores of an AMD EPYC),
not the preset's 30 minutes: 3 seeds x 2 precisions x 3 models of 30 minutes
would be 9 hours.

    .venv/bin/python benchmarks/precision_equal_time.py                    # writes results/precision_equal_time.*
    .venv/bin/python benchmarks/precision_equal_time.py --models realnvp   # one model (merged into the results)
    .venv/bin/python benchmarks/precision_equal_time.py --quick            # seconds, nothing written

Results are written after every run, so an interrupted sweep keeps what it
measured; a run already in the results file (same model, precision, seed and
steps) is not repeated, and a model's stored speed ratio is reused
unless ``--remeasure``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from flowlib.training.config import load_dataset, make_config  # noqa: E402
from flowlib.training.precision import resolve_precision  # noqa: E402

NAME = "precision_equal_time"
DEFAULT_STEPS = {"nice": 1500, "realnvp": 600, "glow": 1500}


def speed_ratio(model: str, repeats: int, steps: int, quick: bool) -> dict:
    """Interleaved training throughput of fp32 and bf16 on the preset's model (phase 1)."""
    config = make_config(model, "quick" if quick else "cpu", seed=0)
    train = load_dataset(config)["train"]
    g = torch.Generator().manual_seed(0)
    batches = [train[torch.randint(len(train), (config.batch_size,), generator=g)] for _ in range(8)]
    fns = {precision: common.preset_step(config, batches, precision) for precision in ("fp32", "bf16")}
    rates = common.interleaved(fns, config.batch_size, repeats, steps, warmup=2)
    ratios = [b / f for b, f in zip(rates["bf16"], rates["fp32"])]
    return {"model": model, "batch_size": config.batch_size, "fp32_samples_per_s": statistics.median(rates["fp32"]),
            "bf16_samples_per_s": statistics.median(rates["bf16"]), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "rounds": repeats, "steps_per_round": steps}


def train_run(model: str, precision: str, seed: int, steps: int, n_valid: int, quick: bool) -> dict:
    """One seed's run of ``steps`` steps in ``precision``, scored in fp32 at each quarter (phase 2)."""
    config = make_config(model, "quick" if quick else "cpu", seed=seed)
    data = load_dataset(config)
    run = common.train_and_score(config, steps, data["train"], data["valid"][:n_valid], precision)
    return {"model": model, "precision": precision, "seed": seed, **run}


def summary_rows(result: dict) -> list[list]:
    """One row per model: speed ratio, steps, and each precision's mean +- sd at the end and each quarter's winner."""
    rows = []
    for speed in result["speed"]:
        model = speed["model"]
        runs = {p: [r for r in result["runs"] if r["model"] == model and r["precision"] == p] for p in ("fp32", "bf16")}
        if not runs["fp32"] or not runs["bf16"]:
            continue
        end = {p: [r["valid_bpd_fp32"][-1] for r in rs] for p, rs in runs.items()}
        quarters = []
        for q in range(min(len(r["valid_bpd_fp32"]) for rs in runs.values() for r in rs)):
            means = {p: statistics.mean(r["valid_bpd_fp32"][q] for r in rs) for p, rs in runs.items()}
            quarters.append("bf16" if means["bf16"] < means["fp32"] else "fp32")
        rows.append([model, f"{speed['ratio']:.2f} ({speed['ratio_min']:.2f}-{speed['ratio_max']:.2f})",
                     f"{runs['fp32'][0]['steps']} / {runs['bf16'][0]['steps']}",
                     _mean_sd(end["fp32"]), _mean_sd(end["bf16"]),
                     f"{statistics.mean(end['bf16']) - statistics.mean(end['fp32']):+.3f}",
                     " ".join(quarters), _seeds(len(end["fp32"]), len(end["bf16"]))])
    return rows


def _seeds(fp32: int, bf16: int) -> str:
    """The seeds behind a row: one number when both precisions have them all, else ``fp32 / bf16``.

    >>> _seeds(3, 3), _seeds(3, 2)
    ('3', '3 / 2')
    """
    return str(fp32) if fp32 == bf16 else f"{fp32} / {bf16}"


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def markdown(result: dict) -> str:
    info = result["machine"]
    rows = summary_rows(result)
    table = common.format_table(
        ["model (cpu preset)", "bf16/fp32 speed (min-max)", "steps fp32 / bf16", "valid bpd fp32",
         "valid bpd bf16", "bf16 - fp32", "better at 1/4 1/2 3/4 1", "seeds"], rows) if rows else "(no model has both precisions yet)"
    return (f"bf16 autocast against fp32 at equal training time ({info['cpu']}, {info['threads']} threads, "
            f"torch {info['torch']}, {info['time']}). Speed: interleaved training steps in one process, median "
            f"per-round ratio. Equal time: fp32 trains N steps and bf16 round(ratio x N), each with the preset's "
            f"batch, Adam and cosine schedule over its own steps; validation bits/dim (first {result['valid_digits']} "
            f"validation digits, scored in fp32) as mean ± sd over seeds; the last column names the precision with "
            f"the lower mean at each quarter of the budget.\n\n{table}\n\n"
            f"Command: `.venv/bin/python benchmarks/precision_equal_time.py`; per-run curves and wall times in "
            f"`{NAME}.json`.")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="realnvp,glow,nice")
    p.add_argument("--steps", default=",".join(f"{k}={v}" for k, v in DEFAULT_STEPS.items()),
                   help="fp32 steps per model, e.g. realnvp=600,glow=1500")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--valid", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--remeasure", action="store_true", help="measure the speed ratio again (default: reuse it)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    steps = {k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(","))}
    if args.quick:
        steps, args.seeds, args.valid, args.repeats = {m: 8 for m in steps}, 1, 64, 2
    if resolve_precision("auto", "cpu") != "bf16":
        print("note: this CPU has no native bf16; bf16 runs emulated and slowly")
    path = common.RESULTS / f"{NAME}.json"
    result = json.loads(path.read_text()) if path.exists() and not args.quick else {"speed": [], "runs": []}
    result.update(benchmark=NAME, machine=common.machine_info(), valid_digits=args.valid)
    for model in args.models.split(","):
        sweep_model(model, steps[model], args, result)
    print(markdown(result))
    return result


def sweep_model(model: str, n: int, args: argparse.Namespace, result: dict) -> None:
    stored = [s for s in result["speed"] if s["model"] == model]
    speed = stored[0] if stored and not args.remeasure else speed_ratio(model, args.repeats, 2 if args.quick else 5,
                                                                        args.quick)
    print(f"{model}: bf16/fp32 = {speed['ratio']:.2f} ({speed['fp32_samples_per_s']:.0f} against "
          f"{speed['bf16_samples_per_s']:.0f} samples/s)", flush=True)
    result["speed"] = [s for s in result["speed"] if s["model"] != model] + [speed]
    for seed in range(args.seeds):
        for precision, count in (("fp32", n), ("bf16", max(1, round(speed["ratio"] * n)))):
            done = [r for r in result["runs"]
                    if (r["model"], r["precision"], r["seed"], r["steps"]) == (model, precision, seed, count)]
            if done:
                continue
            run = train_run(model, precision, seed, count, args.valid, args.quick)
            print(f"{model} seed {seed} {precision} {count} steps: valid bpd {run['valid_bpd_fp32']} "
                  f"({run['seconds'] / 60:.1f} min)", flush=True)
            result["runs"] = [r for r in result["runs"] if not (r["model"] == model and r["precision"] == precision
                                                                 and r["seed"] == seed)] + [run]
            if not args.quick:
                common.write_results(NAME, result, markdown(result))


if __name__ == "__main__":
    main(sys.argv[1:])
