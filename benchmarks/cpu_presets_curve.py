"""Validation bits/dim against wall-clock minutes for the ``cpu`` presets, from their committed results.

Reads ``results/nice-mnist-cpu.json``, ``results/realnvp-mnist-cpu.json`` and ``results/glow-mnist-cpu.json``
(the trainer's ``results.json`` of each run, copied there; each history
entry records the wall-clock seconds at the end of its epoch) and draws one
curve per model, with the test bits/dim of the best-validation model and
chapter 4's per-pixel baseline for reference. Runs kept for comparison
(``results/realnvp-mnist-cpu-constant.json``: the same RealNVP preset with a
constant learning rate; ``results/realnvp-mnist-cpu-bf16-e7.json``: in bf16 for 7 epochs) are drawn dashed
beside the preset's run.

    .venv/bin/python benchmarks/cpu_presets_curve.py    # writes benchmarks/results/cpu_presets.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNS = {"NICE": ROOT / "results" / "nice-mnist-cpu.json", "RealNVP": ROOT / "results" / "realnvp-mnist-cpu.json",
        "Glow": ROOT / "results" / "glow-mnist-cpu.json"}
COMPARED = {"RealNVP": {"constant lr": ROOT / "results" / "realnvp-mnist-cpu-constant.json",
                        "bf16, 7 epochs\n(epochs 1-2 slowed by other work)":
                            ROOT / "results" / "realnvp-mnist-cpu-bf16-e7.json"}}
OUT = Path(__file__).resolve().parent / "results" / "cpu_presets.png"


def main() -> int:
    fig, axes = plt.subplots(1, len(RUNS), figsize=(14, 4.4))
    for ax, (name, path) in zip(axes, RUNS.items()):
        if not path.exists():
            print(f"missing {path}: train it with `python -m flowlib.training {name.lower()} --preset cpu` "
                  f"and copy runs/.../results.json there", file=sys.stderr)
            return 1
        run = json.loads(path.read_text())
        minutes = [h["seconds"] / 60 for h in run["history"]]
        ax.plot(minutes, [h["valid_bpd"] for h in run["history"]], "o-", ms=3, label="validation")
        ax.axhline(run["test_bpd"], color="C1", ls="--", label=f"test (best epoch): {run['test_bpd']:.3f}")
        for k, (what, other_path) in enumerate(COMPARED.get(name, {}).items()):
            other = json.loads(other_path.read_text())
            ax.plot([h["seconds"] / 60 for h in other["history"]], [h["valid_bpd"] for h in other["history"]],
                    "s--", ms=3, color=f"C{4 + k}", label=f"{what}: validation\n(test {other['test_bpd']:.3f})")
        if name == "NICE":
            ax.axhline(4.85, color="C3", ls=":", label="per-pixel baseline (ch. 4): 4.85")
        ax.set_title(f"{name}, cpu preset: {run['device']}, {run['precision']}", fontsize=9)
        ax.set_xlabel("wall-clock minutes")
        ax.set_ylabel("bits / dim")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
