"""The chapters' entry point to trained models: load a finished run, resume an unfinished one, or train.

A run folder holds ``checkpoint.pt`` (to resume), ``best.pt`` (the model with
the lowest validation bits/dim) and ``results.json`` (config, history, test
numbers, hardware, wall time). All three carry the config and a run id;
`run_or_load` returns a model only when they agree, so a model is never
labelled with another run's numbers, and a missing or damaged file leads to a
resume or a retrain (saying which), never to a stuck run: a damaged run's
files are moved aside (``replaced-<time>/``) like a foreign run's, never
overwritten.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint, load_config, load_model, load_results
from ..files import shown_path
from .config import TrainConfig, TrainResult, config_differences
from .distributed import resolve_device
from ..flow_model import FlowModel
from .train import train

__all__ = ["run_or_load"]


def _finished_run(config: TrainConfig) -> TrainResult | None:
    """The finished run in ``out_dir`` made with this config, if its files all agree; else None (saying why)."""
    out = Path(config.out_dir)
    if not (out / "results.json").exists():
        return None
    try:
        result = load_results(out / "results.json")
        saved = load_config(result.config, out / "results.json")
        best = load_checkpoint(out / "best.pt")
        best_config = load_config(best.get("config"), out / "best.pt")
    except CheckpointError as e:
        print(f"Not loading {out}: {e}", file=sys.stderr)
        return None
    if config_differences(saved, config) or result.epochs_done < config.epochs:
        return None
    if best.get("run_id") != result.run_id or config_differences(best_config, config):
        print(f"Not loading {out}: best.pt and results.json come from different runs.", file=sys.stderr)
        return None
    return result


def run_or_load(config: TrainConfig, progress: bool = True) -> tuple[FlowModel, TrainResult]:
    """The chapters' entry point: load a finished run, resume an unfinished one, or train.

    Returns the best model (eval mode) and the run's result. A run is loaded
    only when ``results.json`` and ``best.pt`` carry this config and the same
    run id; a checkpoint of this config is resumed; anything else is trained
    afresh (an older run's files are moved aside, not overwritten).
    """
    out = Path(config.out_dir)
    result = _finished_run(config)
    if result is None:
        resume = False
        if (out / "checkpoint.pt").exists():
            try:
                ckpt = load_checkpoint(out / "checkpoint.pt")
                resume = not config_differences(load_config(ckpt.get("config"), out / "checkpoint.pt"), config)
            except CheckpointError as e:
                print(f"{e}; training afresh.", file=sys.stderr)
        try:
            result = train(config, resume=resume, progress=progress)
        except CheckpointError as e:
            if not resume:
                raise
            print(f"{e}; training afresh.", file=sys.stderr)
            result = train(config, resume=False, progress=progress)
        if result.epochs_done < config.epochs:
            raise RuntimeError(f"training stopped after {result.steps} steps; its checkpoint is in {out}: "
                               f"run again to resume")
    elif progress:
        print(f"Loaded the finished run in {shown_path(out)} (delete it to train again).")
    model, _ = load_model(out / "best.pt", map_location=resolve_device(config.device))
    return model, result
