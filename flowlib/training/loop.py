"""The trainer's epoch loop: the run's state, one step, logging, validation and checkpoints.

`flowlib.training.train` sets a `Run` up and drives it; this module holds what
happens in between:

* `TrainState`: where the run stands (epoch, step, best model, history);
  ``checkpoint.pt`` saves it as a plain dict of its fields.
* `one_epoch`: the steps of the current epoch. A step (`_step`) feeds the next
  global batch of the epoch's order (a function of ``(seed, epoch)`` only) to
  `flowlib.training.fit.train_step` at the learning rate of the schedule (and,
  for `~flowlib.training.rmsprop_momentum.RMSPropMomentum`, the momentum of the epoch);
  under torchrun every process takes its share of it inside
  `flowlib.training.distributed.LocalShare`. Every ``log_every`` steps the
  loss is read back (the only host sync), checked to be finite, the processes
  agree on a stop signal, and a checkpoint is written when
  ``checkpoint_minutes`` have passed. The data and the epoch's order live on
  the device, so a step copies nothing from the host.
* `end_of_epoch`: validation (`evaluate_split`), the best model, a checkpoint.
* `stop_agreed`, `Stop`, `stopped`: a stop signal (`flowlib.training.stopping`)
  is read between steps and between evaluation batches only, where the state
  is whole, so the checkpoint written on a stop resumes bit for bit; so are
  ``max_steps`` and ``max_minutes`` (`Run.out_of_time`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..flow import value_checks
from ..flow_model import FlowModel
from ..metrics import bits_per_dim
from .averaging import WeightAverage
from .checkpoint import CheckpointError, atomic_save, rng_state
from .config import TrainConfig, config_dict
from .distributed import all_reduce_sum, rank_and_world
from .evaluate import EVAL_SEED, log_likelihood_sum
from .fit import learning_rate, train_step
from .rmsprop_momentum import momentum_ramp
from .precision import to_device
from .stopping import StopFlag

__all__ = ["TrainState", "Run", "Stop", "TrainingDiverged", "epoch_order", "one_epoch", "end_of_epoch",
           "evaluate_split", "stop_agreed", "save_checkpoint", "stopped"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint was kept."""


class Stop(Exception):
    """Leave the loop at a step or evaluation-batch boundary.

    ``by_user``: a signal (else ``max_steps`` or ``max_minutes``); ``note``: what `stopped` says after saving.
    """

    def __init__(self, by_user: bool, note: str = "") -> None:
        super().__init__()
        self.by_user = by_user
        self.note = note


@dataclass(slots=True)
class TrainState:
    """Where a run stands; ``checkpoint.pt`` holds it as a plain dict of these fields (``"state"``)."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current epoch completed
    steps: int = 0  # steps completed in all
    best_valid_bpd: float | None = None
    best_epoch: int = 0  # 0: none yet
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch
    wall_seconds: float = 0.0  # training time up to the last checkpoint
    loss_sum: float = 0.0  # the current epoch's mean batch losses (global batches), summed
    loss_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any], source: Path) -> TrainState:
        """The state a checkpoint saved (also the plain dict of earlier versions, with the same keys)."""
        unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CheckpointError(f"{source} holds a training state with unknown fields {unknown}; "
                                  f"it was written by another version of flowlib")
        return cls(**saved)


@dataclass(eq=False)
class Run:
    """A run in progress: what `flowlib.training.train` set up, and the state the loop advances."""

    config: TrainConfig
    precision: str  # resolved: "bf16" or "fp32"
    splits: dict[str, Tensor]  # "train", "valid", "test", on the device
    model: FlowModel
    optimizer: torch.optim.Optimizer
    net: nn.Module | None = None  # what a step runs the global batch through (`wrap_data_parallel`)
    average: WeightAverage | None = None  # the Polyak average of the weights (``average_epochs``)
    state: TrainState = field(default_factory=TrainState)
    stop: StopFlag = field(default_factory=StopFlag)
    in_step: bool = False  # inside a step: a KeyboardInterrupt now would leave it half done
    interrupted: bool = False  # stopped by a signal (the command line exits 130)
    started: float = 0.0  # time.perf_counter() at wall_seconds 0
    opened: float = 0.0  # time.perf_counter() when this call started or resumed the run (``max_minutes``)
    steps_at_open: int = 0  # state.steps then
    matmul_precision: str = "fp32"  # float32 matmuls and convolutions as they run: "fp32" or "tf32"
    last_checkpoint: float = field(default_factory=time.perf_counter)

    @property
    def rank(self) -> int:
        return rank_and_world()[0]

    @property
    def world(self) -> int:
        return rank_and_world()[1]

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def scored_model(self) -> FlowModel:
        """The model that validation and the test score and ``best.pt`` keeps: the average, if there is one."""
        return self.model if self.average is None else self.average.model

    @property
    def steps_per_epoch(self) -> int:
        return self.splits["train"].shape[0] // self.config.batch_size

    @property
    def out(self) -> Path:
        """The run folder."""
        return Path(self.config.out_dir)

    def path(self, name: str) -> Path:
        """``name`` in the run folder."""
        return self.out / name

    def wall_seconds(self) -> float:
        return time.perf_counter() - self.started

    def out_of_time(self) -> bool:
        """Whether this call's ``max_minutes`` are spent (never before its first step, so every call moves on).

        One process reads it before every step; under torchrun the processes agree on it at log points (`_log`).
        """
        limit = self.config.max_minutes
        return (limit is not None and self.state.steps > self.steps_at_open
                and time.perf_counter() - self.opened >= 60 * limit)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of an epoch: a function of ``(seed, epoch)`` only.

    The generator's seed is ``seed * 1_000_003 + epoch`` modulo :math:`2^{64}` (what ``manual_seed`` takes), so
    every seed of `TrainConfig` (below :math:`2^{63}`) works and small seeds keep the orders they always had.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)
    return torch.randperm(n, generator=g)


def one_epoch(run: Run, progress: bool) -> None:
    """The steps of the current epoch, from where it stands to its end; stops only between steps."""
    cfg, st = run.config, run.state
    order = to_device(epoch_order(run.splits["train"].shape[0], cfg.seed, st.epoch), run.device)
    loss_sum = torch.tensor(st.loss_sum, dtype=torch.float64, device=run.device)
    bar = _progress(run.steps_per_epoch, f"epoch {st.epoch + 1}/{cfg.epochs}", progress and run.rank == 0)
    bar.update(st.step_in_epoch)
    t_log, seen = time.perf_counter(), 0
    run.model.train()
    try:
        with value_checks(False):
            while st.step_in_epoch < run.steps_per_epoch:
                if run.world == 1 and run.stop.signal is not None:
                    raise Stop(by_user=True)
                if cfg.max_steps is not None and st.steps >= cfg.max_steps:
                    raise Stop(by_user=False)
                if run.world == 1 and run.out_of_time():
                    raise Stop(by_user=False, note=_time_note(run))
                _step(run, order, loss_sum)
                seen += 1
                if seen % cfg.log_every == 0 or st.step_in_epoch == run.steps_per_epoch:
                    st.loss_sum = loss_sum.item()  # one host sync per log interval
                    _log(run, bar, seen * cfg.batch_size / (time.perf_counter() - t_log))
                    checkpoint_if_due(run)
    finally:
        if not run.in_step:
            st.loss_sum = loss_sum.item()
        bar.close()


def _step(run: Run, order: Tensor, loss_sum: Tensor) -> None:
    """One step on the next global batch of ``order`` (each process takes its share inside ``run.net``).

    The loss added to ``loss_sum`` is the global batch's mean, the same on every
    process: the mean of the processes' means over equal shares.
    """
    cfg, st = run.config, run.state
    batch = order[st.step_in_epoch * cfg.batch_size:(st.step_in_epoch + 1) * cfg.batch_size]
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(cfg.schedule, cfg.lr, st.steps, cfg.epochs * run.steps_per_epoch, cfg.min_lr,
                                    round(cfg.warmup_epochs * run.steps_per_epoch))
        if "momentum" in group:  # RMSPropMomentum: the released code's ramp, a function of the epoch
            group["momentum"] = momentum_ramp(st.epoch + 1)
    run.in_step = True
    loss = train_step(run.model, run.optimizer, run.splits["train"][batch], clip_grad=cfg.clip_grad,
                      precision=run.precision, net=None if run.net is run.model else run.net, compile=cfg.compile)
    if run.world > 1:
        loss = all_reduce_sum(loss) / run.world
    if run.average is not None:
        run.average.update(run.model)
    loss_sum += loss
    st.loss_count += 1
    st.step_in_epoch += 1
    st.steps += 1
    run.in_step = False


def _log(run: Run, bar: Any, samples_per_s: float) -> None:
    """At a log point: the loss must be finite, the bar moves, and every process agrees on stopping."""
    st = run.state
    mean = st.loss_sum / st.loss_count
    _check_finite(run, mean)
    bar.set_postfix(bpd=f"{mean:.4f}", img_s=f"{samples_per_s:.0f}")
    bar.update(st.step_in_epoch - bar.n)
    if run.world > 1 and stop_agreed(run):  # a single process checks before every step
        raise Stop(by_user=True)
    if run.world > 1 and run.config.max_minutes is not None and _on_any_process(run, run.out_of_time()):
        raise Stop(by_user=False, note=_time_note(run))  # all stop together, at a log point


def _time_note(run: Run) -> str:
    return f"Time budget of {run.config.max_minutes:g} minutes reached"


def _check_finite(run: Run, mean_loss: float) -> None:
    if math.isfinite(mean_loss):
        return
    st, ckpt = run.state, run.path("checkpoint.pt")
    kept = f"kept the last good checkpoint in {ckpt}" if ckpt.exists() else "no checkpoint had been written yet"
    raise TrainingDiverged(f"loss became {mean_loss} at epoch {st.epoch + 1}, step {st.step_in_epoch}; "
                           f"stopped and {kept}. Try a lower learning rate or gradient clipping (clip_grad).")


def stop_agreed(run: Run) -> bool:
    """Whether a stop signal came, to this process or (under torchrun) to any: all stop at the same point."""
    if run.world == 1:
        return run.stop.signal is not None
    return _on_any_process(run, run.stop.signal is not None)


def _on_any_process(run: Run, flag: bool) -> bool:
    """Whether ``flag`` is true on any process (an all-reduce and a host sync)."""
    return all_reduce_sum(torch.tensor(float(flag), device=run.device)).item() > 0


def end_of_epoch(run: Run, progress: bool, on_epoch: Callable[[dict[str, float]], None] | None) -> None:
    """Validate, record, keep the best model, checkpoint."""
    st = run.state
    valid_bpd = evaluate_split(run, "valid")
    record = {"epoch": st.epoch + 1, "train_bpd": st.loss_sum / max(st.loss_count, 1),
              "valid_bpd": valid_bpd, "seconds": run.wall_seconds()}
    st.history.append(record)
    st.epoch, st.step_in_epoch, st.loss_sum, st.loss_count = st.epoch + 1, 0, 0.0, 0
    if st.best_valid_bpd is None or valid_bpd < st.best_valid_bpd:
        st.best_valid_bpd, st.best_epoch = valid_bpd, st.epoch
        if run.rank == 0:
            atomic_save({"config": config_dict(run.config), "run_id": st.run_id,
                         "model": run.scored_model.state_dict(), "epoch": st.epoch, "valid_bpd": valid_bpd},
                        run.path("best.pt"))
    checkpoint_if_due(run, last_epoch=st.epoch == run.config.epochs)
    if run.rank == 0 and progress:
        print(f"epoch {record['epoch']}: train {record['train_bpd']:.4f}, valid {valid_bpd:.4f} bits/dim",
              flush=True)
    if on_epoch is not None:
        on_epoch(record)


def evaluate_split(run: Run, split: str, samples: int = 1) -> float:
    """Mean bits/dim of a split; a stop signal between batches raises `Stop`.

    Chunk :math:`i` (``eval_batch_size`` examples) is scored with noise seed
    ``EVAL_SEED + i`` by process :math:`i \\bmod N`: the chunks and seeds of
    the single process and of `flowlib.training.rescore`, so :math:`N`
    processes add the same float64 terms in another order. Between rounds of
    :math:`N` chunks the processes agree on a stop. ``samples`` > 1 scores
    each example by the importance-weighted bound
    (`flowlib.training.evaluate.log_likelihood_sum`); the final test evaluation uses it.
    It runs in fp32 whatever the training precision (no autocast): every run
    is scored as one fixed, exactly invertible fp32 function, comparable across
    precisions (bf16-trained RealNVP weights score 0.024-0.027 bits/dim worse
    under bf16 autocast: benchmarks/results/precision_equal_time.json).
    """
    data = run.splits[split]
    chunks = data.split(run.config.eval_batch_size)
    total = torch.zeros((), dtype=torch.float64, device=run.device)
    with value_checks(False):
        for first in range(0, len(chunks), run.world):
            if stop_agreed(run):
                raise Stop(by_user=True)
            i = first + run.rank
            if i < len(chunks):
                total += log_likelihood_sum(run.scored_model, chunks[i], len(chunks[i]), seed=EVAL_SEED + i,
                                            samples=samples)
    all_reduce_sum(total)
    return float(bits_per_dim((total / data.shape[0]).item(), run.model.num_dims))


def save_checkpoint(run: Run) -> None:
    """``checkpoint.pt`` (rank 0): config, model, optimizer, random state, `TrainState` and the weights' average."""
    if run.rank != 0:
        return
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise TrainingDiverged(f"parameters are not finite; kept the last good checkpoint in "
                               f"{run.path('checkpoint.pt')}")
    run.state.wall_seconds = run.wall_seconds()
    run.last_checkpoint = time.perf_counter()
    saved = {"config": config_dict(run.config), "model": run.model.state_dict(),
             "optimizer": run.optimizer.state_dict(), "rng": rng_state(run.device), "state": run.state.to_dict()}
    if run.average is not None:
        saved["average"] = run.average.state_dict()
    atomic_save(saved, run.path("checkpoint.pt"))


def checkpoint_if_due(run: Run, last_epoch: bool = False) -> None:
    """A checkpoint every ``checkpoint_minutes`` (between steps or at an epoch's end) and after the last epoch."""
    if last_epoch or time.perf_counter() - run.last_checkpoint > 60 * run.config.checkpoint_minutes:
        save_checkpoint(run)


def stopped(run: Run, by_user: bool, note: str = "") -> None:
    """After a `Stop` (or a KeyboardInterrupt between steps): save the state, say how to continue."""
    run.interrupted = by_user
    save_checkpoint(run)
    if run.rank == 0 and (by_user or note):
        print(f"{note or 'Stopped'}: checkpoint saved to {run.path('checkpoint.pt')} at step {run.state.steps}; "
              f"continue with resume=True (--resume).", file=sys.stderr)


class _NoBar:
    """What the loop needs of a progress bar, doing nothing (no tqdm needed when progress is off)."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=True)
