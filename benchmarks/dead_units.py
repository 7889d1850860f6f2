"""How many of NICE's hidden units are dead? Over the first steps of the cpu preset, and in trained runs.

A ReLU unit is *dead* on a set of digits when its pre-activation is negative for every one of them: it adds
nothing to its coupling's output and gets no gradient from them; only a change in the layers below can turn it on. For each hidden layer
of the four coupling nets this script reports the fraction of units dead on the first ``--probe`` validation
digits, averaged over the four nets (`flowlib.book.diagnostics.dead_unit_fractions`).

* Candidates (``NAME=JSON`` of `TrainConfig` overrides of NICE's ``cpu`` preset, as
  ``benchmarks/preset_candidates.py`` takes them) train from the same start for ``--steps`` steps the way the
  trainer does (its epoch orders, Adam, its cosine over the preset's whole run, bf16 nets where the CPU has
  them); every ``--every`` steps the mean training loss since the last report and the dead fractions are
  recorded, and at the end the validation bits/dim on the first 2000 validation digits. (A report draws the
  probe digits' dequantization noise from the global generator, so the trajectory depends on ``--every``.)
* ``--runs FOLDER ...`` measures trained runs' ``best.pt`` instead (no training).

    .venv/bin/python benchmarks/dead_units.py --candidate preset={} \\
        --candidate pytorch-bias='{"model_kwargs": {"zero_hidden_bias": false}}'
    .venv/bin/python benchmarks/dead_units.py --runs runs/nice-mnist-cpu runs/nice-mnist-cpu-zero_hidden_biasFalse --tag runs
    .venv/bin/python benchmarks/dead_units.py --quick    # a few steps of the quick model, nothing written
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from flowlib.book.diagnostics import dead_unit_fractions  # noqa: E402
from flowlib.flow import initialize_from_data, value_checks  # noqa: E402
from flowlib.training.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from flowlib.training.config import build_model, load_dataset, make_config  # noqa: E402
from flowlib.training.evaluate import evaluate  # noqa: E402
from flowlib.training.fit import learning_rate, loss_scale, make_optimizer, train_step  # noqa: E402
from flowlib.training.loop import epoch_order  # noqa: E402
from flowlib.training.precision import resolve_precision  # noqa: E402


def train_candidate(name: str, overrides: dict, preset: str, steps: int, every: int, probe_size: int) -> dict:
    config = make_config("nice", preset, **common.with_preset_model_kwargs("nice", preset, overrides))
    splits = load_dataset(config)
    train, valid = splits["train"], splits["valid"]
    probe, scored = valid[:probe_size], valid[:2000]
    precision = resolve_precision(config.precision, "cpu")
    per_epoch = train.shape[0] // config.batch_size
    total = config.epochs * per_epoch
    torch.manual_seed(config.seed)
    model = build_model(config)
    optimizer = make_optimizer(model, config.lr, config.betas, config.eps, config.weight_decay, config.optimizer,
                               loss_factor=loss_scale(model, "bpd"))
    reports = [{"step": 0, "train_bpd": None, "dead": None}]
    losses: list[torch.Tensor] = []  # read back only at a report: no host sync per step
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        epoch, within = divmod(step, per_epoch)
        if within == 0:
            order = epoch_order(train.shape[0], config.seed, epoch)
        x = train[order[within * config.batch_size:(within + 1) * config.batch_size]]
        if step == 0:
            initialize_from_data(model, x)
            reports[0]["dead"] = dead_unit_fractions(model, probe)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config.schedule, config.lr, step, total, config.min_lr)
        with value_checks(step == 0):
            losses.append(train_step(model, optimizer, x, clip_grad=config.clip_grad, precision=precision))
        if (step + 1) % every == 0 or step + 1 == steps:
            reports.append({"step": step + 1, "train_bpd": torch.stack(losses[-every:]).mean().item(),
                            "dead": dead_unit_fractions(model, probe)})
            print(f"{name:>12s} step {step + 1:5d}  train {reports[-1]['train_bpd']:.3f}  dead "
                  + " ".join(f"{f:.3f}" for f in reports[-1]["dead"]), flush=True)
    valid_bpd = evaluate(model, scored).bpd  # in fp32, as the trainer scores every run
    return {"name": name, "overrides": overrides, "precision": precision, "steps": steps,
            "valid_bpd": valid_bpd, "seconds": time.perf_counter() - start, "reports": reports}


def measure_run(folder: str, probe_size: int) -> dict:
    path = Path(folder) / "best.pt"
    best = load_checkpoint(path)
    model, config = model_from_checkpoint(best, path)
    probe = load_dataset(config)["valid"][:probe_size]
    torch.manual_seed(0)  # the dequantization noise of the probe digits
    return {"run": folder, "epoch": best.get("epoch"), "valid_bpd": best.get("valid_bpd"),
            "dead": dead_unit_fractions(model, probe)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=JSON",
                   help="TrainConfig overrides of NICE's cpu preset (repeatable; default: the preset alone)")
    p.add_argument("--runs", nargs="+", default=[], help="trained run folders to measure instead")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--probe", type=int, default=1000, help="validation digits a unit may respond to")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tag", default="", help="results go to dead_units-TAG.*")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    info = common.machine_info()
    if args.runs:
        rows = [measure_run(f, args.probe) for f in args.runs]
        table = common.format_table(
            ["run (best.pt)", "epoch", "valid bits/dim", "dead per hidden layer (1 to 5)"],
            [[r["run"], r["epoch"], f"{r['valid_bpd']:.4f}", " ".join(f"{f:.3f}" for f in r["dead"])] for r in rows])
        markdown = (f"NICE's hidden units dead (off) on every one of the first {args.probe} validation digits, "
                    f"mean over the four coupling nets, trained runs ({info['cpu']}, torch {info['torch']}, "
                    f"{info['time']})\n\n{table}")
        data = {"machine": info, "probe": args.probe, "runs": rows}
    else:
        specs = args.candidate or ["preset={}"]
        candidates = []
        for spec in specs:
            name, _, text = spec.partition("=")
            candidates.append((name, json.loads(text or "{}")))
        preset, steps, every = ("quick", 6, 3) if args.quick else ("cpu", args.steps, args.every)
        rows = [train_candidate(name, ov, preset, steps, every, 100 if args.quick else args.probe)
                for name, ov in candidates]
        head = ["candidate", "overrides of the cpu preset", "valid bits/dim"] + [
            f"step {r['step']}: train, dead" for r in rows[0]["reports"]]
        body = []
        for r in rows:
            cells = [r["name"], f"`{json.dumps(r['overrides'])}`", f"{r['valid_bpd']:.3f}"]
            for rep in r["reports"]:
                loss = "" if rep["train_bpd"] is None else f"{rep['train_bpd']:.3f}, "
                cells.append(loss + " ".join(f"{f:.2f}" for f in rep["dead"]))
            body.append(cells)
        markdown = (f"NICE's hidden units over the first {steps} steps of the {preset} preset: at each report the "
                    f"mean training bits/dim since the last one and, per hidden layer (1 to 5), the fraction of units "
                    f"dead (off) on every one of the first {args.probe} validation digits (mean over the four coupling "
                    f"nets); validation bits/dim on the first 2000 validation digits at the end ({info['cpu']}, "
                    f"{info['threads']} threads, torch {info['torch']}, {info['time']})\n\n"
                    + common.format_table(head, body))
        data = {"machine": info, "probe": args.probe, "candidates": rows}
    print(markdown)
    if not args.quick:
        name = f"dead_units-{args.tag}" if args.tag else "dead_units"
        given = argv if argv is not None else sys.argv[1:]
        command = " ".join([".venv/bin/python benchmarks/dead_units.py", *(f"'{a}'" if " " in a or "{" in a else a
                                                                            for a in given)])
        common.write_results(name, data, markdown + f"\n\nCommand: `{command}`")
    return data


if __name__ == "__main__":
    main()
