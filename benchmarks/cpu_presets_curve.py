"""Validation bits/dim against wall-clock minutes for the ``cpu`` presets, every seed, from their committed results.

Reads each model's seeds from ``results/``: ``<model>-mnist-cpu.json`` (seed 0) and
``<model>-mnist-cpu-seed<N>.json`` (the trainer's ``results.json`` of each run, copied there; each history entry
records the wall-clock seconds at the end of its epoch), and draws one curve per seed, with the test bits/dim of
each seed's best-validation model and their mean and standard deviation in the legend, and chapter 4's per-pixel
baseline for reference. Runs kept for comparison (``results/realnvp-mnist-cpu-fp32.json``: the earlier RealNVP
preset, fp32 for 4 epochs at lr 1e-3; ``results/realnvp-mnist-cpu-constant.json``: the same with a constant
learning rate; ``results/realnvp-mnist-cpu-bf16-e7.json``: in bf16 for 7 epochs at lr 1e-3;
``results/glow-mnist-cpu-fp32.json``: the earlier Glow preset, fp32 for 10 epochs, eager;
``results/glow-mnist-cpu-lr1e-3.json``: the Glow preset at its earlier lr 1e-3;
``results/nice-mnist-cpu-zero_hidden_biasFalse.json``, ``-seed1.json`` and ``-seed2.json``: the NICE preset
with PyTorch's default hidden biases, ``--hidden-bias pytorch``, as it was before they started at zero;
``results/nice-mnist-cpu-wd0-noavg.json`` and ``-wd2e-05.json``: with those biases, the NICE preset before weight
decay and the weights' average went into it, and with the decay alone; ``glow-mnist-cpu-avg1.json`` and ``-seed1-avg1.json``: the Glow preset with the weights'
Polyak average over one epoch scored, ``--average-epochs 1``; ``glow-mnist-cpu-warmup1.json`` and
``-warmup1-seed1.json``: the Glow preset with its learning rate warmed up linearly over the first epoch,
``--warmup-epochs 1``) are drawn dashed beside the preset's runs.

With ``--samples``, a second row shows 64 samples at temperature 0.7 (:math:`x = f^{-1}(0.7 z)`,
:math:`z \\sim p_Z`) from each model's seed-0 run, read from its run folder (``best.pt`` in the ``out_dir`` its
results file names, or else in the preset's ``runs/<model>-mnist-cpu``, on this machine only), so that the numbers
are seen beside what the model draws. A model whose run folder is missing, or whose ``best.pt`` is another run's,
is left blank and named.

    .venv/bin/python benchmarks/cpu_presets_curve.py             # writes benchmarks/results/cpu_presets.png
    .venv/bin/python benchmarks/cpu_presets_curve.py --samples   # ... with T = 0.7 samples under each curve
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"NICE": "nice", "RealNVP": "realnvp", "Glow": "glow"}
COMPARED = {"NICE": {"PyTorch's default hidden biases\n(the preset before)":
                         ROOT / "results" / "nice-mnist-cpu-zero_hidden_biasFalse.json",
                     "the same, seed 1": ROOT / "results" / "nice-mnist-cpu-zero_hidden_biasFalse-seed1.json",
                     "the same, seed 2": ROOT / "results" / "nice-mnist-cpu-zero_hidden_biasFalse-seed2.json",
                     "PyTorch's biases, neither weight\ndecay nor the average":
                         ROOT / "results" / "nice-mnist-cpu-wd0-noavg.json",
                     "PyTorch's biases, weight decay\n2e-5 alone": ROOT / "results" / "nice-mnist-cpu-wd2e-05.json"},
            "RealNVP": {"earlier preset: fp32,\n4 epochs, lr 1e-3": ROOT / "results" / "realnvp-mnist-cpu-fp32.json",
                        "fp32, 4 epochs,\nconstant lr 1e-3": ROOT / "results" / "realnvp-mnist-cpu-constant.json",
                        "bf16, 7 epochs, lr 1e-3\n(epochs 1-2 slowed by other work)":
                            ROOT / "results" / "realnvp-mnist-cpu-bf16-e7.json"},
            "Glow": {"earlier preset: fp32,\n10 epochs, eager": ROOT / "results" / "glow-mnist-cpu-fp32.json",
                     "bf16, compiled, 16 epochs,\nlr 1e-3": ROOT / "results" / "glow-mnist-cpu-lr1e-3.json",
                     "the preset, the weights'\naverage scored": ROOT / "results" / "glow-mnist-cpu-avg1.json",
                     "the average, seed 1": ROOT / "results" / "glow-mnist-cpu-seed1-avg1.json",
                     "the preset, the learning rate\nwarmed up over the first epoch":
                         ROOT / "results" / "glow-mnist-cpu-warmup1.json",
                     "the warm-up, seed 1": ROOT / "results" / "glow-mnist-cpu-warmup1-seed1.json"}}
OUT = Path(__file__).resolve().parent / "results" / "cpu_presets.png"
TEMPERATURE = 0.7


def seed_files(model: str, results: Path = ROOT / "results") -> dict[int, Path]:
    """``{seed: results file}`` of a model's ``cpu`` preset runs: seed 0 unsuffixed, seed N as ``-seedN``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for name in ("glow-mnist-cpu.json", "glow-mnist-cpu-seed2.json", "glow-mnist-cpu-is16.json"):
    ...     _ = (d / name).write_text("{}")
    >>> {seed: path.name for seed, path in seed_files("glow", d).items()}
    {0: 'glow-mnist-cpu.json', 2: 'glow-mnist-cpu-seed2.json'}
    """
    found = {}
    if (results / f"{model}-mnist-cpu.json").exists():
        found[0] = results / f"{model}-mnist-cpu.json"
    for path in results.glob(f"{model}-mnist-cpu-seed*.json"):
        match = re.fullmatch(rf"{model}-mnist-cpu-seed([0-9]+)\.json", path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def spread(values: list[float]) -> str:
    """``mean ± sd (n seeds)``, or the one value when there is one.

    >>> spread([1.5]), spread([1.4, 1.5, 1.6])
    ('1.500 (1 seed)', '1.500 ± 0.100 (3 seeds)')
    """
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)} seeds)"


def axis_range(curves: list[list[float]]) -> tuple[float, float]:
    """``(bottom, top)`` of a y-axis (matplotlib's order) for validation curves that start at their highest.

    A validation curve falls from its first epoch, so the axis reaches the highest first value; a later
    spike above that (a run that diverged for an epoch and recovered) would squash every curve, so it is
    left off the axis (its value is written there instead). 5% of the span is kept as margin.

    >>> axis_range([[1.66, 2.59, 1.50], [1.82, 1.61, 1.40]])  # the 2.59 spike is left off
    (1.379, 1.841)
    """
    top = max(curve[0] for curve in curves)
    low = min(min(curve) for curve in curves)
    margin = 0.05 * (top - low)
    return round(low - margin, 6), round(top + margin, 6)


def draw_zoom(ax, drawn: list[tuple[str, str, dict]]) -> None:
    """An inset of the curves' second half in time where their ends differ by less than a tenth of the axis.

    NICE's curves fall 1.3 bits/dim in ten minutes and then differ by hundredths; at the
    axis' scale they would look the same.
    """
    bottom, top = ax.get_ylim()
    ends = [run["history"][-1]["valid_bpd"] for _, _, run in drawn]
    if max(ends) - min(ends) >= 0.1 * (top - bottom):
        return
    start = max(run["history"][-1]["seconds"] for _, _, run in drawn) / 60 / 2
    inset = ax.inset_axes([0.35, 0.42, 0.6, 0.5])
    late = []
    for color, style, run in drawn:
        points = [(h["seconds"] / 60, h["valid_bpd"]) for h in run["history"] if h["seconds"] / 60 >= start]
        late += [v for _, v in points]
        inset.plot(*zip(*points), style, ms=2, color=color)
    pad = 0.1 * (max(late) - min(late))
    inset.set_ylim(min(late) - pad, max(late) + pad)
    inset.set_title(f"validation after {start:.0f} min", fontsize=8)
    inset.tick_params(labelsize=7)


#: Colours for compared runs past C9, none of them near C0 (the preset's seeds) or C1 and C3 (the lines).
EXTRA_COLORS = ("black", "goldenrod", "darkviolet", "teal")


def compared_color(k: int) -> str:
    """The colour of the ``k``-th compared run: C4 to C9, then `EXTRA_COLORS` (C0, the preset's seeds, is never
    reused).

    >>> [compared_color(k) for k in (0, 5, 6, 7)]
    ['C4', 'C9', 'black', 'goldenrod']
    """
    if k >= 6 + len(EXTRA_COLORS):
        raise ValueError(f"at most {6 + len(EXTRA_COLORS)} compared runs have their own colour, got run {k}")
    return f"C{4 + k}" if k < 6 else EXTRA_COLORS[k - 6]


def draw_samples(ax, run: dict) -> None:
    """64 samples at `TEMPERATURE` from the run's ``best.pt``, or a note saying why there are none."""
    import torch

    from flowlib.book.chapter import image_grid
    from flowlib.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint

    ax.axis("off")
    best = ROOT / run["out_dir"] / "best.pt"
    if not best.exists():  # a folder renamed after its run (results.json keeps the name it trained under)
        best = ROOT / "runs" / f"{run['config']['model']}-mnist-cpu" / "best.pt"
    try:
        ckpt = load_checkpoint(best)
    except CheckpointError as e:
        ax.text(0.5, 0.5, f"no samples:\n{e}", ha="center", va="center", fontsize=8, wrap=True)
        print(f"no samples for {run['config']['model']}: {e}", file=sys.stderr)
        return
    if ckpt.get("run_id") != run["run_id"]:
        ax.text(0.5, 0.5, f"no samples:\n{best.parent.name}/best.pt is another run's", ha="center", va="center",
                fontsize=8)
        print(f"no samples for {run['config']['model']}: {best} is not run {run['run_id']}", file=sys.stderr)
        return
    model, _ = model_from_checkpoint(ckpt, best)
    with torch.no_grad():
        x = model.sample(64, temperature=TEMPERATURE, generator=torch.Generator().manual_seed(0))
    ax.imshow(image_grid(x, nrow=8), cmap="gray")
    ax.set_title(f"seed 0, T = {TEMPERATURE}", fontsize=9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", action="store_true", help="draw T = 0.7 samples of each seed-0 model below its curves")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    rows = 2 if args.samples else 1
    entries = max(5 + len(COMPARED.get(name, {})) for name in MODELS)  # the longest legend, below its axes
    fig, axes = plt.subplots(rows, len(MODELS), figsize=(12, 4.4 * rows + 0.45 * entries), layout="constrained",
                             squeeze=False)
    for col, (name, model) in enumerate(MODELS.items()):
        ax = axes[0, col]
        files = seed_files(model)
        if 0 not in files:
            print(f"missing results/{model}-mnist-cpu.json: train it with `python -m flowlib.training {model} "
                  f"--preset cpu` and copy runs/.../results.json there", file=sys.stderr)
            return 1
        runs = {seed: json.loads(path.read_text()) for seed, path in files.items()}
        tests = [run["test_bpd"] for run in runs.values()]
        for k, (seed, run) in enumerate(runs.items()):
            minutes = [h["seconds"] / 60 for h in run["history"]]
            ax.plot(minutes, [h["valid_bpd"] for h in run["history"]], "o-", ms=3, color="C0",
                    alpha=max(0.3, 1 - 0.25 * k),
                    label=f"validation, seed {seed} (test {run['test_bpd']:.3f})")
        ax.axhline(statistics.mean(tests), color="C1", ls="--", label=f"test (best epoch): {spread(tests)}")
        compared = {what: json.loads(path.read_text()) for what, path in COMPARED.get(name, {}).items()}
        for k, (what, other) in enumerate(compared.items()):
            ax.plot([h["seconds"] / 60 for h in other["history"]], [h["valid_bpd"] for h in other["history"]],
                    "s--", ms=3, color=compared_color(k), label=f"{what}: validation\n(test {other['test_bpd']:.3f})")
        drawn = [(compared_color(k), "s--", other) for k, other in enumerate(compared.values())]
        drawn += [("C0", "o-", run) for run in runs.values()]
        low, top = axis_range([[h["valid_bpd"] for h in run["history"]] for _, _, run in drawn])
        ax.set_ylim(low, top)
        draw_zoom(ax, drawn)
        spikes = [(color, h) for color, _, run in drawn for h in run["history"] if h["valid_bpd"] > top]
        for k, (color, h) in enumerate(spikes):  # cut off at the top, their values written there one under another
            ax.annotate(f"{h['valid_bpd']:.2f} (off the axis)", (h["seconds"] / 60, top), xytext=(4, -10 - 10 * k),
                        textcoords="offset points", fontsize=8, color=color)
        if name == "NICE":
            ax.axhline(4.85, color="C3", ls=":", label="per-pixel baseline (ch. 4): 4.85")
        ax.set_title(f"{name}, cpu preset: {runs[0]['device']}, {runs[0]['precision']}", fontsize=9)
        ax.set_xlabel("wall-clock minutes")
        ax.set_ylabel("bits / dim")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below the axes: it hides no curve
        print(f"{name}: test bits/dim {spread(tests)}")
        if args.samples:
            draw_samples(axes[1, col], runs[0])
    fig.savefig(args.out, dpi=110, bbox_inches="tight")  # the legends below the axes included whole
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
