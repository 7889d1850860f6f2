"""The end of a run: the best model on the test set, ``results.json``, and the `TrainResult`.

`finish` runs after the epoch loop of `flowlib.training.train`, still inside
its stop-signal handling: when every epoch is done it loads ``best.pt``,
scores it on the test set with ``eval_samples`` importance samples per image
(`flowlib.training.loop.evaluate_split`, which reads the stop flag between
batches) and writes ``results.json``. A Ctrl-C or SIGTERM there stops it
cleanly: training is complete and ``checkpoint.pt`` says so (it was written
after the last epoch and is not touched), no ``results.json`` is written, and
``--resume`` later re-runs only this evaluation, with the same or another
``--eval-samples`` (``results.json`` records the one it used);
``python -m flowlib.training.rescore RUN --samples K`` scores ``best.pt`` too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

from ..files import shown_path
from .checkpoint import atomic_write_text, check_best, load_checkpoint
from .config import TrainResult, config_dict
from .distributed import barrier, device_name
from .loop import Run, Stop, evaluate_split

__all__ = ["finish"]


def finish(run: Run) -> TrainResult:
    """The run's `TrainResult`; after the last epoch (and no stop) also the test numbers and ``results.json``."""
    done = run.state.epoch >= run.config.epochs and not run.interrupted
    test_bpd = _final_evaluation(run) if done else None
    result = _result(run, test_bpd)
    if run.rank == 0 and test_bpd is not None:
        atomic_write_text(json.dumps(dataclasses.asdict(result), indent=2), run.path("results.json"))
    return result


def _final_evaluation(run: Run) -> float | None:
    """Test bits/dim of ``best.pt`` with ``eval_samples``; None when a stop signal came first (saying how to finish)."""
    st, samples = run.state, run.config.eval_samples
    barrier()  # rank 0 wrote best.pt
    check_best(run.path("best.pt"), st.run_id)
    try:
        run.scored_model.load_state_dict(load_checkpoint(run.path("best.pt"), map_location=run.device)["model"])
        if run.rank == 0:
            print(f"Final evaluation: the best model (epoch {st.best_epoch}) on {run.splits['test'].shape[0]} test "
                  f"examples, {samples} noise sample{'s' if samples > 1 else ''} each", file=sys.stderr, flush=True)
        return evaluate_split(run, "test", samples=samples)
    except (Stop, KeyboardInterrupt):
        run.interrupted = True
        if run.rank == 0:
            print(f"Stopped during the final test evaluation; training is complete ({run.path('checkpoint.pt')} "
                  f"says so). Finish with --resume (resume=True), which runs only the final evaluation, with this "
                  f"or another --eval-samples; or score best.pt with: python -m flowlib.training.rescore {run.out} "
                  f"--samples {samples}", file=sys.stderr)
        return None


def _result(run: Run, test_bpd: float | None) -> TrainResult:
    st = run.state
    return TrainResult(
        config=config_dict(run.config), run_id=st.run_id, epochs_done=st.epoch, steps=st.steps,
        wall_seconds=run.wall_seconds() if test_bpd is not None else st.wall_seconds,
        best_valid_bpd=st.best_valid_bpd, best_epoch=st.best_epoch, test_bpd=test_bpd,
        test_nats=None if test_bpd is None else test_bpd * run.model.num_dims * math.log(2),
        history=st.history, interrupted=run.interrupted, device=device_name(run.device),
        precision=run.precision, out_dir=shown_path(run.out), world_size=run.world,
        matmul_precision=run.matmul_precision)
