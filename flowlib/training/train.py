"""The trainer: NICE, RealNVP or Glow by maximum likelihood, from a notebook or the command line.

Read it top-down: `train` opens the run (`_opened`: device, process group,
locked run folder, data, model, optimizer), starts or restores it, then
alternates `flowlib.training.loop.one_epoch` and
`flowlib.training.loop.end_of_epoch` until the last epoch, and
`flowlib.training.final.finish` evaluates the best model on the test set
(with ``eval_samples`` importance samples per image). Each step minimises
the negative log-likelihood of a global batch in bits per dimension,

.. math:: \\mathcal L(\\theta) = -\\frac{1}{B}\\sum_{b=1}^{B}
   \\frac{\\log p_Z(f_\\theta(x_b)) + \\log|\\det J_{f_\\theta}(x_b)|}{D \\ln 2}.

What lives where:

* here: set-up and tear-down, start or resume, the order of the phases, and
  what a stop means in each;
* `flowlib.training.loop`: `TrainState` (what ``checkpoint.pt`` saves), the
  `Run`, one step, logging, validation, checkpoints;
* `flowlib.training.final`: the final test evaluation, ``results.json`` and
  the `TrainResult`;
* `flowlib.training.averaging`: with ``average_epochs``, the Polyak average of
  the weights that validation and the test score and ``best.pt`` keeps;
* `flowlib.training.distributed`: torchrun, and why N processes compute what
  one process computes on the global batch (noise and batch statistics included).

Ctrl-C and SIGTERM raise a flag (`flowlib.training.stopping`) that the loop
reads between steps and the evaluations between batches, from the first step
to the end of the final evaluation, so the checkpoint written on a stop is
the state after the last completed step and ``--resume`` continues bit for
bit; ``max_steps`` and ``max_minutes`` stop at the same places, so a run
can be trained in calls of a few minutes each. README.md ("What the trainer
guarantees") lists the guarantees and how they are tested.

    python -m flowlib.training nice --preset cpu            # flowlib.training.cli
    python -m flowlib.training realnvp --preset cpu --resume
    torchrun --nproc_per_node 2 -m flowlib.training nice --preset paper

From Python::

    from flowlib.training.config import make_config
    from flowlib.training.runs import run_or_load
    from flowlib.training.train import train
    result = train(make_config("nice", "cpu"))
    model, result = run_or_load(make_config("nice", "cpu"))   # loads it when already trained
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..flow import initialize_from_data
from .averaging import WeightAverage, average_beta
from .checkpoint import CheckpointError, check_best, load_checkpoint, set_rng_state, state_bytes
from .run_folder import RunLock, check_writable, move_run_aside
from .config import TrainConfig, TrainResult, build_model, config_differences, load_dataset
from .distributed import (broadcast_object, device_name, init_distributed, rank_and_world, resolve_device,
                          shutdown_distributed, wrap_data_parallel)
from .final import finish
from .fit import loss_scale, make_optimizer
from .loop import Run, Stop, TrainingDiverged, TrainState, end_of_epoch, epoch_order, one_epoch, stopped
from .precision import matmul_precision, resolve_precision
from .stopping import stop_signals_to

__all__ = ["train", "TrainingDiverged"]

_RUN_FILES = ("checkpoint.pt", "best.pt", "results.json")  # what a run folder holds
#: Config fields a resumed run may change besides `RESUMABLE_FIELDS`: they enter only the final
#: evaluation, and ``results.json`` records the value it used.
_FINAL_ONLY = ("eval_samples",)


def train(
    config: TrainConfig, resume: bool = False, progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config`` to its last epoch, or until ``max_steps`` or a stop signal; see the module docstring."""
    with _opened(config) as run:
        _start_or_restore(run, resume)
        with stop_signals_to(run.stop):
            _epochs(run, progress, on_epoch)
            return finish(run)


def _epochs(run: Run, progress: bool, on_epoch: Callable[[dict[str, float]], None] | None) -> None:
    """The epochs left; a stop between steps (or in validation) saves the whole state."""
    try:
        while run.state.epoch < run.config.epochs:
            one_epoch(run, progress)
            end_of_epoch(run, progress, on_epoch)
    except Stop as stop:
        stopped(run, by_user=stop.by_user, note=stop.note)
    except KeyboardInterrupt:
        if run.in_step or run.stop.signal is not None:
            print(f"Stopped without saving; the last checkpoint in {run.out} stays.", file=sys.stderr)
            raise
        stopped(run, by_user=True)  # raised between steps (by a callback): the state is whole


@contextmanager
def _opened(config: TrainConfig) -> Iterator[Run]:
    """The run, set up: process group, locked run folder and float32 matmul precision, undone however it ends."""
    device = resolve_device(config.device)
    started = init_distributed(device)
    lock = None
    try:
        rank, world = rank_and_world()
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
        if rank == 0:
            check_writable(config.out_dir)
            lock = RunLock(config.out_dir)
            lock.acquire()
        with matmul_precision(config.matmul_precision, device) as effective:
            run = _built(config, device)
            run.matmul_precision = effective
            yield run
    finally:
        if lock is not None:
            lock.release()
        shutdown_distributed(started)


def _built(config: TrainConfig, device: torch.device) -> Run:
    """Data, model and optimizer on ``device``; one batch's values checked once (the loop runs without checks).

    The whole data set moves to the device once, so the steps index it there and copy nothing from the host.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    splits = {k: v.to(device) for k, v in load_dataset(config).items()}
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, config.lr, config.betas, config.eps, config.weight_decay, config.optimizer,
                               loss_factor=loss_scale(model, "bpd"))  # the loop's steps are in bits/dim
    if rank_and_world()[0] == 0:  # model, Adam's two moments; the old file stays until the new one is renamed over it
        check_writable(config.out_dir, needed_bytes=7 * state_bytes(model))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model.eval()
        model.log_prob(splits["train"][:8])
    model.train()
    return Run(config=config, precision=resolve_precision(config.precision, device), splits=splits, model=model,
               optimizer=optimizer)


def _start_or_restore(run: Run, resume: bool) -> None:
    """Restore the checkpoint (``resume``), or start afresh; then the data-parallel wrapper and the clock."""
    if resume:
        _restore(run)
    else:
        _start(run)
    run.net = wrap_data_parallel(run.model, run.device)
    run.started = time.perf_counter() - run.state.wall_seconds
    run.opened, run.steps_at_open = time.perf_counter(), run.state.steps
    if run.rank == 0:
        st, cfg = run.state, run.config
        tf32 = ", tf32 matmuls" if run.matmul_precision == "tf32" else ""
        print(f"Training {cfg.model} ({cfg.preset}) on {device_name(run.device)}, {run.precision}{tf32}: "
              f"{run.steps_per_epoch} steps an epoch, epoch {st.epoch + 1} step {st.step_in_epoch} "
              f"of {cfg.epochs} epochs; run folder {run.out}", file=sys.stderr, flush=True)


def _restore(run: Run) -> None:
    """Model, optimizer, `TrainState` and random state from ``checkpoint.pt``, made with this config."""
    path = run.path("checkpoint.pt")
    ckpt = load_checkpoint(path, map_location=run.device)
    diff = [name for name in config_differences(ckpt["config"], run.config) if name not in _FINAL_ONLY]
    if diff:
        raise ValueError(f"checkpoint at {path} was made with a different config (fields {diff}); "
                         f"start afresh without --resume, or use another --out")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.average = _new_average(run)
    if run.average is not None:
        if "average" not in ckpt:
            raise CheckpointError(f"{path} holds no weight average, but average_epochs is "
                                  f"{run.config.average_epochs}; start afresh without --resume")
        run.average.load_state_dict(ckpt["average"])
    run.state = TrainState.from_dict(ckpt["state"], path)
    set_rng_state(ckpt["rng"], run.device)
    if run.state.best_epoch:
        check_best(run.path("best.pt"), run.state.run_id)


def _start(run: Run) -> None:
    """A fresh run: an older run's files moved aside, one run id for all processes, layers set from the data."""
    if run.rank == 0:
        move_run_aside(run.out, _RUN_FILES)
    run.state = TrainState(run_id=broadcast_object(TrainState().run_id))
    first = epoch_order(run.splits["train"].shape[0], run.config.seed, 0)[: run.config.batch_size]
    initialize_from_data(run.model, run.splits["train"][first.to(run.device)])  # same batch on every process
    run.average = _new_average(run)


def _new_average(run: Run) -> WeightAverage | None:
    """The Polyak average of the weights over ``average_epochs`` epochs (None when not asked for)."""
    epochs = run.config.average_epochs
    return None if epochs is None else WeightAverage(run.model, average_beta(epochs, run.steps_per_epoch))
