"""The ``paper`` presets of NICE and RealNVP (and Glow) on one H100, in trainer calls of at most 6 minutes.

One prepared script for a lent GPU: each model trains through the book's own
trainer (``python -m flowlib.training MODEL --preset paper``), in calls that
stop themselves after ``--max-minutes`` with a checkpoint that ``--resume``
continues exactly, and only the finished runs' ``results.json`` files and one
``summary.json`` (every run's progress, finished or not) are copied to
``--out``: at most 4 small files. The checkpoints (NICE's is about 230 MB
with Adam's moments) stay in ``--runs`` on the machine, so a second call
while the machine is still warm resumes them. No Jupyter is needed (nor is
there any on the device), so chapters 08 and 09 are not executed there.

How to call it
--------------

Here, once: put MNIST into the repository's ignored ``data/`` folder, so that
it travels with the working tree (``$FLOWLIB_DATA`` is pointed at it)::

    mkdir -p data && cp -r ../shared/data/MNIST data/

Then, through the device tool (one H100; ``python3`` there has torch 2.11)::

    run(command="python3 benchmarks/gpu_paper_runs.py --budget-minutes 6 --out $OUT",
        carry=["data"], timeout_s=600)

``--budget-minutes`` is the training time of this call, shared among the
models (NICE 1 part, RealNVP 3, Glow 3; a model that finishes early leaves its
rest to the next); startup, compilation and validation at epoch ends come on
top, so give the tool about 3 minutes more. ``--models nice,realnvp,glow``
adds Glow. A second call on the still-warm machine continues every run that
did not finish; ``--fresh`` starts them again. Here, on the CPU, ``--quick``
runs the whole logic in seconds with the ``quick`` presets (each run is
paused after its first step and resumed, so the resume path runs too), and
``--dry-run`` prints the trainer commands without running them.

Sizing by arithmetic (to be checked by the run; no GPU has run this yet)
------------------------------------------------------------------------

FLOPs per training step: 2 per multiply-add, and 3 times the forward pass
(the backward pass computes input and weight gradients), checked with
``torch.utils.flop_counter`` on the flowlib models:

* NICE (paper): 4 additive couplings, each an MLP 392 -> 5 x 1000 ReLU -> 392:
  392*1000 + 4*1000*1000 + 1000*392 = 4.78 M multiply-adds per coupling,
  19.1 M per example, 38.3 MFLOP forward, 115 MFLOP per trained example;
  batch 200: **23 GFLOP per step** (counter: 22.8).
* RealNVP (paper preset: 3 scales, residual s/t nets of 64 channels and 8
  blocks, i.e. 18 3x3 convolutions per net, 16 couplings): per example
  9 * 64 * 64 * 16 multiply-adds per pixel and coupling, over 3 couplings at
  28x28, 6 at 14x14, 3 at 7x7 and 4 final ones at 7x7: 2.29 G multiply-adds,
  4.6 GFLOP forward, 13.8 GFLOP trained; batch 64: **881 GFLOP per step**
  (counter: 881).
* Glow (paper preset: 2 scales of 32 steps, 512 hidden channels): batch 64,
  **889 GFLOP per step** (counter).

H100 SXM peaks (dense): bf16 ~990 TFLOP/s, tf32 ~495, fp32 without tensor
cores ~67. These are small matmuls and convolutions (200 x 1000 x 1000;
64 channels on 28x28 to 7x7 maps), so assume 30-50% of peak at best:

* NICE in bf16 (its preset's ``auto``): 23 GFLOP / 300-500 TFLOP/s = 0.05-0.08 ms.
* RealNVP in tf32: 881 GFLOP / 150-250 TFLOP/s = 3.5-6 ms; in true fp32
  (33 TFLOP/s at 50%) about 26 ms. Glow in tf32: about the same as RealNVP.

Kernel launches per step, counted as the non-view aten operations of one
forward and backward pass (a ``TorchDispatchMode`` on the CPU; each is a
kernel on a GPU): NICE 238 in fp32 and 345 under bf16 autocast (108 of them
casts), plus a few fused-Adam launches; RealNVP ~2,700 (288 convolutions,
272 batch norms, 272 ReLUs and their backward passes, 400 in-place adds);
Glow ~4,800 (mostly element-wise: 1,416 multiplications). At 5-10 us per launch (eager PyTorch pays more: the
autograd and dispatcher overhead on the host):

* NICE: 1.7-3.5 ms of launches against 0.08 ms of arithmetic: **launch-bound by
  20-40x**. ``torch.compile`` (the trainer's ``--compile``) fuses the
  element-wise work, leaving the ~70 GEMMs and ~50 fused kernels, ~0.5-1 ms;
  only CUDA graphs would remove the rest (not offered by the trainer).
* RealNVP: 13-27 ms of launches against 3.5-6 ms of tf32 arithmetic:
  **launch-bound**; compiled (fused batch norm, ReLU and adds, cheaper
  launches from inductor's wrapper) ~7-10 ms a step; true fp32 would be
  arithmetic-bound at ~26 ms, hence ``--matmul-precision tf32`` here
  (``results.json`` records it; its effect on bits/dim against true fp32 has
  not been measured: ``--realnvp-matmul fp32`` runs that).
* Glow: ~25-50 ms eager, ~8-12 ms compiled; compiling 64 steps of flow takes
  minutes of the budget.

So every model runs with ``--compile`` (``--no-compile`` runs them eager). Compile
time counts in the budget: 12 s for NICE and 99 s for the cpu preset's
RealNVP on 2 CPU cores (``benchmarks/results/compile_check.md``); the paper
RealNVP's graph is about 4x larger (8 residual blocks, not 2), so expect 1-3
minutes on the first call, and much less on later calls on the same machine,
which find inductor's cache. Against ~27 ms a step eager, compiling pays
for itself after about 10,000 steps: worth it, but not by much, within 6
minutes; ``summary.json``'s history (the seconds at each epoch's end) shows
what the first epoch, which holds the compilation, cost.

Steps needed, from the committed CPU curves (``results/*.json``) and whether
each goal fits 6 minutes:

* NICE <= 4.36 bits/dim (the NICE paper's 1980.5 nats on MNIST in bits/dim):
  an epoch is 250 steps. With PyTorch's default hidden biases the cpu runs
  overfit far above it: without weight decay and the weights' average (same
  model and Adam, cosine schedule, ``results/nice-mnist-cpu-wd0-noavg.json``)
  4.86 bits/dim on validation after 2,000 steps, 4.65 after 4,500, its best
  4.5742 after 9,500 (epoch 38), then rising while the training loss fell to
  4.31. With the hidden biases at zero, as the paper preset now starts them
  (with PyTorch's biases 95-96% of the fifth hidden layer's units ended dead,
  against 87-88% with zero biases: docs/results.md),
  the cpu preset (with weight decay, the average and a cosine) was at 4.357 on
  validation after 6,750 steps (epoch 27) and reached 4.290 test bits/dim in
  16,250 (``results/nice-mnist-cpu.json``). The paper preset (a constant
  rate, the paper's eps, neither decay nor average) has no CPU curve; at ~1 ms
  a step, 10,000 steps take ~10 s (+ ~20 s compiling), so compute is not the
  limit. Planned: 100 epochs (25,000 steps, under a minute).
* RealNVP <= 1.06 bits/dim (the MNIST figure quoted for RealNVP in later
  papers): an epoch is 781 steps. The only committed curve is the cpu
  preset's model, ~15x cheaper (32 channels, 2 blocks): 2.09, 1.64, 1.56,
  1.55 after epochs 1-4 (3,124 steps, ``results/realnvp-mnist-cpu-fp32.json``);
  nothing committed shows how many steps the paper model needs for 1.06, and
  the published figures come from hundreds of epochs. Its share of a
  6-minute call, ~4.5 minutes at ~7-10 ms a step less 1-3 minutes
  compiling, is 9,000-30,000 steps (12-38 epochs): **the goal most likely
  does not fit 6 minutes**; the run measures where the curve stands.
  Planned: 20 epochs (15,620 steps, 2-3 minutes after compiling; a call
  that runs out of time leaves it paused, and the next call resumes it).
* Glow (optional; no goal set): 10 epochs planned, ~1.5-2 minutes plus compiling.

The paper presets train at a constant learning rate, so cutting their epochs
(``--epochs``) changes no step: a later call with more epochs continues the
same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Only the first call of a model in ``--quick`` mode: minutes that stop it after its first step.
_PAUSE_AFTER_ONE_STEP = 1e-6


@dataclass(frozen=True)
class Plan:
    """One model's run: its goal (test bits/dim, or None), epochs, share of the budget and float32 matmuls."""

    model: str
    goal_bpd: float | None
    epochs: int
    weight: float
    matmul: str


PLANS = {
    "nice": Plan("nice", 4.36, 100, 1.0, "fp32"),  # its nets run in bf16 (the preset's "auto")
    "realnvp": Plan("realnvp", 1.06, 20, 3.0, "tf32"),
    "glow": Plan("glow", None, 10, 3.0, "tf32"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-minutes", type=float, default=6.0, help="training minutes of this call, all models")
    p.add_argument("--command-minutes", type=float, default=6.0, help="at most this many minutes per trainer call")
    p.add_argument("--models", default="nice,realnvp", help="comma-separated: nice, realnvp, glow")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "runs" / "gpu-paper-out")),
                   help="where results and summary.json go (default $OUT)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "gpu-paper", help="the run folders (checkpoints)")
    p.add_argument("--data", type=Path, help="the data root holding MNIST/raw (default: ./data when it has MNIST)")
    p.add_argument("--epochs", default="", help="override the planned epochs, e.g. nice=50,realnvp=40")
    p.add_argument("--realnvp-matmul", choices=["fp32", "tf32"], help="float32 matmuls of RealNVP and Glow")
    p.add_argument("--no-compile", action="store_true", help="run the steps eager instead of compiled")
    p.add_argument("--fresh", action="store_true", help="start every run afresh instead of resuming it")
    p.add_argument("--quick", action="store_true", help="the quick presets on the CPU, in seconds")
    p.add_argument("--dry-run", action="store_true", help="print the trainer commands, run nothing")
    return p


def _plans(args: argparse.Namespace) -> list[Plan]:
    """The models asked for, with the epochs and matmul precision the options set."""
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in PLANS]
    if unknown or not names:
        raise ValueError(f"--models takes {sorted(PLANS)}, comma-separated; got {args.models!r}")
    epochs = _epoch_overrides(args.epochs)
    plans = []
    for name in names:
        plan = PLANS[name]
        matmul = args.realnvp_matmul if args.realnvp_matmul and name != "nice" else plan.matmul
        plans.append(Plan(name, plan.goal_bpd, int(epochs.get(name, plan.epochs)), plan.weight, matmul))
    return plans


def _epoch_overrides(text: str) -> dict[str, int]:
    """``"nice=50,realnvp=40"`` as ``{"nice": 50, "realnvp": 40}``; a clear error for anything else."""
    overrides = {}
    for item in filter(None, text.split(",")):
        model, _, count = item.partition("=")
        if model not in PLANS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--epochs takes MODEL=N pairs (models {sorted(PLANS)}, N >= 1), got {item!r}")
        overrides[model] = int(count)
    return overrides


def _environment(args: argparse.Namespace) -> dict[str, str]:
    """The trainer's environment: flowlib importable from this checkout, ``$FLOWLIB_DATA`` where MNIST is."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    data = args.data or (ROOT / "data" if (ROOT / "data" / "MNIST" / "raw").is_dir() else None)
    if data is not None:
        env["FLOWLIB_DATA"] = str(data.resolve())
    return env


def _check_ready(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Fail in seconds, before any GPU time is spent, when the device, numpy or MNIST is missing."""
    import torch

    from flowlib.datasets.mnist import data_root, mnist_dir

    if not args.quick and not torch.cuda.is_available():
        raise SystemExit(f"no CUDA GPU visible to torch {torch.__version__}; on a CPU use --quick")
    try:
        import numpy  # noqa: F401  (checkpoints are hashed through numpy)
    except ImportError as e:
        raise SystemExit("numpy is missing: the trainer's checkpoints need it") from e
    os.environ.update({k: v for k, v in env.items() if k == "FLOWLIB_DATA"})
    raw = mnist_dir(data_root())
    if not (raw / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"MNIST not found in {raw}: copy it into ./data/MNIST/raw (see the docstring) or pass --data")


def _paths(args: argparse.Namespace, plan: Plan) -> tuple[Path, str]:
    """The run folder of ``plan``, and the name its results take in ``--out``."""
    preset = "quick" if args.quick else "paper"
    return args.runs / f"{plan.model}-mnist-{preset}", f"{plan.model}-mnist-{preset}.json"


def _command(args: argparse.Namespace, plan: Plan, folder: Path, minutes: float) -> list[str]:
    """One trainer call: ``python -m flowlib.training`` that stops itself after ``minutes``."""
    cmd = [sys.executable, "-m", "flowlib.training", plan.model, "--out", str(folder), "--no-progress",
           "--max-minutes", f"{minutes:.6g}", "--matmul-precision", plan.matmul]
    if args.quick:
        cmd += ["--preset", "quick", "--device", "cpu"]
    else:
        cmd += ["--preset", "paper", "--device", "cuda", "--epochs", str(plan.epochs)]
        cmd += [] if args.no_compile else ["--compile"]
    if (folder / "checkpoint.pt").exists():
        cmd.append("--resume")
    return cmd


def _finished(folder: Path, plan: Plan, quick: bool) -> dict[str, Any] | None:
    """The run's ``results.json`` when it has trained all the planned epochs, else None."""
    path = folder / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    wanted = results["config"]["epochs"] if quick else plan.epochs
    return results if results["epochs_done"] >= wanted else None


def _train(args: argparse.Namespace, plan: Plan, env: dict[str, str], minutes: float) -> list[dict[str, Any]]:
    """Trainer calls for ``plan`` until its run finishes or its ``minutes`` are spent; one record per call."""
    folder, _ = _paths(args, plan)
    deadline, calls = time.monotonic() + 60 * minutes, []
    least = 0.0 if args.quick else 0.5  # a call shorter than this would spend its time starting up
    while (args.fresh and not calls) or _finished(folder, plan, args.quick) is None:
        left = (deadline - time.monotonic()) / 60
        if left <= least or len(calls) >= 20:
            break
        limit = _PAUSE_AFTER_ONE_STEP if args.quick and not calls else min(args.command_minutes, left)
        cmd = _command(args, plan, folder, limit)
        if args.fresh and not calls and "--resume" in cmd:
            cmd.remove("--resume")  # the trainer moves the earlier run's files aside
        print(f"[gpu_paper_runs] {plan.model}: {' '.join(cmd[1:])}", flush=True)
        start = time.monotonic()
        returncode = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        calls.append({"max_minutes": limit, "seconds": round(time.monotonic() - start, 1), "returncode": returncode})
        if returncode != 0:
            break
    return calls


def _progress(folder: Path, results: dict[str, Any] | None) -> dict[str, Any]:
    """Where the run stands: from ``results.json`` when finished, else from its checkpoint's training state."""
    if results is not None:
        keys = ("epochs_done", "steps", "best_valid_bpd", "test_bpd", "device", "precision", "matmul_precision",
                "history")
        return {**{k: results.get(k) for k in keys}, "train_minutes": round(results["wall_seconds"] / 60, 2)}
    if not (folder / "checkpoint.pt").exists():
        return {}
    from flowlib.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(folder / "checkpoint.pt")
    state = ckpt["state"]
    return {"epochs_done": state["epoch"], "steps": state["steps"], "best_valid_bpd": state["best_valid_bpd"],
            "test_bpd": None, "precision_asked": ckpt["config"]["precision"], "history": state["history"],
            "matmul_precision_asked": ckpt["config"].get("matmul_precision"),
            "train_minutes": round(state["wall_seconds"] / 60, 2)}


def _report(args: argparse.Namespace, plan: Plan, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's entry of ``summary.json``; a finished run's ``results.json`` is copied to ``--out``."""
    folder, name = _paths(args, plan)
    results = _finished(folder, plan, args.quick)
    if results is not None:
        shutil.copyfile(folder / "results.json", args.out / name)
    entry = {"model": plan.model, "finished": results is not None, "results_file": name if results else None,
             "epochs_planned": results["config"]["epochs"] if results else plan.epochs, "goal_bpd": plan.goal_bpd,
             "calls": calls, **_progress(folder, results)}
    test = entry.get("test_bpd")
    entry["goal_met"] = None if test is None or plan.goal_bpd is None else test <= plan.goal_bpd
    return entry


def _line(entry: dict[str, Any]) -> str:
    """One readable line per run for the log."""
    if "steps" not in entry:
        return f"{entry['model']}: no checkpoint (calls: {entry['calls']})"
    state = "finished" if entry["finished"] else "paused (continue: call again)"
    test = "" if entry["test_bpd"] is None else f"; test {entry['test_bpd']:.4f} bits/dim"
    met = "met" if entry["goal_met"] else "not met"
    goal = "" if entry["goal_met"] is None else f" (goal {entry['goal_bpd']}: {met})"
    best = "n/a" if entry["best_valid_bpd"] is None else f"{entry['best_valid_bpd']:.4f}"
    return (f"{entry['model']}: {state}, {entry['epochs_done']}/{entry['epochs_planned']} epochs, {entry['steps']} "
            f"steps, {entry['train_minutes']} min of training; best valid {best}{test}{goal}")


def _machine(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.quick else None
    return {"gpu": gpu, "torch": torch.__version__, "python": sys.version.split()[0], "quick": args.quick,
            "budget_minutes": args.budget_minutes, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    """Train the planned models within the budget; write ``summary.json`` and the finished ``results.json``."""
    args = _parser().parse_args(argv)
    plans, env = _plans(args), _environment(args)
    if args.dry_run:
        for plan in plans:
            print(" ".join(_command(args, plan, _paths(args, plan)[0], args.command_minutes)))
        return 0
    _check_ready(args, env)
    args.out.mkdir(parents=True, exist_ok=True)
    start, runs = time.monotonic(), []
    for i, plan in enumerate(plans):
        left = args.budget_minutes - (time.monotonic() - start) / 60
        share = left * plan.weight / sum(p.weight for p in plans[i:])  # an early finish leaves the rest to the next
        runs.append(_report(args, plan, _train(args, plan, env, share)))
    summary = {"machine": _machine(args), "runs": runs, "seconds": round(time.monotonic() - start, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for entry in runs:
        print(_line(entry), flush=True)
    return 0 if all(c["returncode"] == 0 for entry in runs for c in entry["calls"]) else 1


if __name__ == "__main__":
    sys.exit(main())
