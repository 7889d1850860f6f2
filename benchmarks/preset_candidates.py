"""Candidate settings of a ``cpu`` preset at equal training time: which reaches the lowest validation bits/dim.

A preset's budget is wall time (about 30 minutes on 2 cores), so re-tuning it
compares settings (learning rate, batch size, width and depth, precision,
schedule) at equal *time*, not equal steps. Two phases, as in
``precision_equal_time.py``:

1. **Throughput.** Each candidate's training step (a fresh model of the
   preset with the candidate's overrides, in its precision, `common.preset_step`)
   runs on the same MNIST batches, interleaved in one process
   (`common.interleaved`); its speed is the median samples/s over the rounds.
2. **Equal time.** Each candidate trains for ``--minutes`` of quiet-machine
   time at its measured speed, ``round(minutes x 60 x samples/s / batch)``
   steps, with its schedule over its own steps (`common.train_and_score`),
   and is scored in fp32 on the first ``--valid`` validation digits at each
   quarter of its budget, for each of ``--seeds`` seeds. The steps follow from
   the speeds, so a busy machine slows the runs but does not change them.

A short budget stands in for the preset's 30 minutes only where it ranks the
same: the table gives each candidate's rank at every quarter, so a ranking
that changes along the budget shows, and a candidate chosen here is trained
for the full budget (``python -m flowlib.training MODEL --preset cpu``) before
a preset takes it.

Candidates are ``NAME=JSON`` pairs, JSON being `TrainConfig` overrides of the
model's ``cpu`` preset, among the fields this comparison applies (`VARIABLE`:
Adam's settings, batch, clipping, schedule, precision, model size; a field it
would ignore, such as ``compile`` or ``optimizer``, is refused)::

    .venv/bin/python benchmarks/preset_candidates.py realnvp --minutes 8 \\
        --candidate preset='{}' --candidate bf16='{"precision": "bf16"}' \\
        --candidate bf16-lr2e-3='{"precision": "bf16", "lr": 0.002}'
    .venv/bin/python benchmarks/preset_candidates.py glow --quick --candidate a='{}' --candidate b='{"lr": 0.002}'

Results go to ``results/preset_candidates-MODEL.{json,md}`` after every run
(``--quick``: seconds, nothing written); a run already there (same
candidate settings, seed and steps) is not repeated, and a candidate's stored
speed is reused unless ``--remeasure``.
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


#: The `TrainConfig` fields a candidate may set: those `common.train_and_score` (Adam through
#: `flowlib.training.fit.fit`, eager, the preset's data) honours. Any other field would be silently ignored.
VARIABLE = ("batch_size", "lr", "betas", "eps", "weight_decay", "clip_grad", "schedule", "precision", "model_kwargs",
            "eval_batch_size")


def parse_candidate(text: str) -> tuple[str, dict]:
    """``NAME=JSON`` as ``(name, overrides)``, or a `ValueError` saying what was expected.

    >>> parse_candidate('lr2e-3={"lr": 0.002}')
    ('lr2e-3', {'lr': 0.002})
    >>> parse_candidate('lr 0.002')
    Traceback (most recent call last):
    ...
    ValueError: a candidate is NAME=JSON (TrainConfig overrides), got 'lr 0.002'
    >>> parse_candidate('c={"compile": true}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: candidate 'c' sets 'compile', which this comparison cannot vary; it can vary batch_size, lr, ...
    """
    name, sep, overrides = text.partition("=")
    try:
        parsed = json.loads(overrides) if sep and name else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"a candidate is NAME=JSON (TrainConfig overrides), got {text!r}")
    for field in parsed:
        if field not in VARIABLE:
            raise ValueError(f"candidate {name!r} sets {field!r}, which this comparison cannot vary; it can vary "
                             f"{', '.join(VARIABLE)}")
    return name, parsed


def ranks(values: dict[str, float]) -> dict[str, int]:
    """Rank 1 for the lowest value.

    >>> ranks({"a": 1.52, "b": 1.47, "c": 1.60})
    {'a': 2, 'b': 1, 'c': 3}
    """
    order = sorted(values, key=values.get)
    return {name: order.index(name) + 1 for name in values}


def markdown(result: dict) -> str:
    """The table: each candidate's speed, steps, end score (mean ± sd) and rank at each quarter."""
    info = result["machine"]
    names = [c["name"] for c in result["candidates"]]
    runs = {n: [r for r in result["runs"] if r["name"] == n] for n in names}
    names = [n for n in names if runs[n]]
    if not names:
        return "(no runs yet)"
    quarters = min(len(r["valid_bpd_fp32"]) for n in names for r in runs[n])
    mean_at = [{n: statistics.mean(r["valid_bpd_fp32"][q] for r in runs[n]) for n in names} for q in range(quarters)]
    rank_at = [ranks(m) for m in mean_at]
    speed = {s["name"]: s for s in result["speed"]}
    rows = []
    for n in sorted(names, key=lambda n: mean_at[-1][n]):
        end = [r["valid_bpd_fp32"][-1] for r in runs[n]]
        sd = f" ± {statistics.stdev(end):.3f}" if len(end) > 1 else ""
        settings = next(c["overrides"] for c in result["candidates"] if c["name"] == n)
        rows.append([n, f"`{json.dumps(settings)}`", f"{speed[n]['samples_per_s']:.0f}", runs[n][0]["steps"],
                     f"{statistics.mean(end):.3f}{sd}", " ".join(str(r[n]) for r in rank_at), len(end)])
    table = common.format_table(["candidate", "overrides of the cpu preset", "samples/s", "steps",
                                 "valid bits/dim", "rank at 1/4 1/2 3/4 1", "seeds"], rows)
    return (f"{result['model']} `cpu` preset candidates at equal training time, {result['minutes']} min each "
            f"({info['cpu']}, {info['threads']} threads, torch {info['torch']}, {info['time']}). Speed: interleaved "
            f"training steps in one process, median samples/s; each candidate trains round(minutes x 60 x "
            f"samples/s / batch) steps with its schedule over its own steps; validation bits/dim on the first "
            f"{result['valid_digits']} validation digits, scored in fp32, mean ± sd over seeds, and each "
            f"candidate's rank (by mean) at each quarter of its budget.\n\n{table}\n\n"
            f"Command: `.venv/bin/python benchmarks/preset_candidates.py {result['model']} --minutes "
            f"{result['minutes']} --candidate NAME=JSON ...`; per-run curves and wall times in "
            f"`preset_candidates-{result['model']}.json`.")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=["nice", "realnvp", "glow"])
    p.add_argument("--candidate", action="append", required=True,
                   help="NAME=JSON: TrainConfig overrides of the model's cpu preset (repeatable)")
    p.add_argument("--minutes", type=float, default=8.0, help="quiet-machine training time per run")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--valid", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--remeasure", action="store_true", help="measure the speeds again (default: reuse them)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if not args.minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {args.minutes}")
    common.setup_threads(args.threads)
    preset = "quick" if args.quick else "cpu"
    candidates = dict(parse_candidate(text) for text in args.candidate)
    candidates = {name: common.with_preset_model_kwargs(args.model, preset, overrides)
                  for name, overrides in candidates.items()}
    configs = {name: make_config(args.model, preset, **overrides) for name, overrides in candidates.items()}
    if args.quick:
        args.minutes, args.seeds, args.valid, args.repeats = 0.05, 1, 64, 2
    name = f"preset_candidates-{args.model}"
    path = common.RESULTS / f"{name}.json"
    result = json.loads(path.read_text()) if path.exists() and not args.quick else {"speed": [], "runs": []}
    if result.get("minutes", args.minutes) != args.minutes:
        raise ValueError(f"{path} holds {result['minutes']}-minute runs, got --minutes {args.minutes}: "
                         f"compare candidates at one budget")
    known = {c["name"]: c["overrides"] for c in result.get("candidates", [])}
    for cand, overrides in candidates.items():
        if cand in known and known[cand] != overrides:
            raise ValueError(f"candidate {cand!r} is {known[cand]} in {path}, got {overrides}: give it a new name")
    known.update(candidates)
    result.update(benchmark="preset_candidates", model=args.model, minutes=args.minutes, machine=common.machine_info(),
                  valid_digits=args.valid, candidates=[{"name": n, "overrides": o} for n, o in known.items()])

    data = load_dataset(next(iter(configs.values())))
    g = torch.Generator().manual_seed(0)
    stored = {s["name"] for s in result["speed"]}
    to_time = [n for n in candidates if args.remeasure or n not in stored]
    if to_time:
        fns, batch = {}, {}
        for n in to_time:
            config = configs[n]
            batches = [data["train"][torch.randint(len(data["train"]), (config.batch_size,), generator=g)]
                       for _ in range(8)]
            fns[n], batch[n] = common.preset_step(config, batches, config.precision), config.batch_size
        # interleaved() counts samples with one batch size; time in steps and convert per candidate
        rates = common.interleaved(fns, 1, args.repeats, 2 if args.quick else 5, warmup=2)
        for n in to_time:
            speed = {"name": n, "samples_per_s": statistics.median(rates[n]) * batch[n],
                     "steps_per_s": statistics.median(rates[n]), "rounds_steps_per_s": rates[n]}
            result["speed"] = [s for s in result["speed"] if s["name"] != n] + [speed]
            print(f"{n}: {speed['samples_per_s']:.0f} samples/s", flush=True)
    speeds = {s["name"]: s for s in result["speed"]}

    for seed in range(args.seeds):
        for n, overrides in candidates.items():
            steps = max(1, round(args.minutes * 60 * speeds[n]["steps_per_s"]))
            if any(r["name"] == n and r["seed"] == seed and r["steps"] == steps for r in result["runs"]):
                continue
            config = make_config(args.model, preset, seed=seed, **overrides)
            run = common.train_and_score(config, steps, data["train"], data["valid"][:args.valid], config.precision)
            run = {"name": n, "overrides": overrides, "seed": seed, "precision": config.precision, **run}
            print(f"{n} seed {seed}: {steps} steps, valid bits/dim {[round(v, 3) for v in run['valid_bpd_fp32']]} "
                  f"({run['seconds'] / 60:.1f} min)", flush=True)
            result["runs"] = [r for r in result["runs"] if not (r["name"] == n and r["seed"] == seed)] + [run]
            if not args.quick:
                common.write_results(name, result, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
