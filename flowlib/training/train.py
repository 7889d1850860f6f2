"""The trainer: NICE or RealNVP by maximum likelihood, from a notebook or the command line.

Read it top-down: `train` sets up (device, run folder, data, model,
optimizer), starts or restores, then alternates `_one_epoch` and
`_end_of_epoch` until the last epoch, and `_finish` evaluates the best model
on the test set (with ``eval_samples`` importance samples per image). One
step (`_step`) takes this process's share of the next batch of the epoch's
order (a function of ``(seed, epoch)`` only), sets the learning rate of the
schedule and calls `flowlib.training.fit.train_step`, which
minimises the negative log-likelihood in bits per dimension,

.. math:: \\mathcal L(\\theta) = -\\frac{1}{B}\\sum_{b=1}^{B}
   \\frac{\\log p_Z(f_\\theta(x_b)) + \\log|\\det J_{f_\\theta}(x_b)|}{D \\ln 2}.

Every ``log_every`` steps the loss is read back (the only host sync), checked
to be finite, and a checkpoint is written when ``checkpoint_minutes`` have
passed. Ctrl-C and SIGTERM raise a flag (`flowlib.training.stopping`) that the loop
reads between steps, so the checkpoint written on a stop is the state after
the last completed step and ``--resume`` continues bit for bit. README.md
("What the trainer guarantees") lists the guarantees and how they are tested.

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

import dataclasses
import json
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

from ..files import shown_path
from .checkpoint import (RunLock, atomic_save, atomic_write_text, check_best, check_writable, load_checkpoint,
                         move_run_aside, rng_state, set_rng_state, state_bytes)
from .config import TrainConfig, TrainResult, build_model, config_dict, config_differences, load_dataset
from .distributed import (all_reduce_sum, barrier, broadcast_object, device_name, init_distributed,
                          rank_and_world, resolve_device, shutdown_distributed, wrap_data_parallel)
from .evaluate import EVAL_SEED, log_likelihood_sum
from .fit import learning_rate, make_optimizer, train_step
from .precision import resolve_precision
from ..flow import initialize_from_data, value_checks
from ..metrics import bits_per_dim
from ..flow_model import FlowModel
from .stopping import StopFlag, stop_signals_to

__all__ = ["train", "TrainingDiverged"]

_RUN_FILES = ("checkpoint.pt", "best.pt", "results.json")  # what a run folder holds


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint was kept."""


# ----------------------------------------------------------------------------- stopping between steps


class _Stop(Exception):
    """Internal: leave the loop at a step boundary (``by_user``: a signal, else ``max_steps``)."""

    def __init__(self, by_user: bool) -> None:
        super().__init__()
        self.by_user = by_user


# ----------------------------------------------------------------------------- one run


@dataclass
class _Run:
    config: TrainConfig
    device: torch.device
    precision: str
    rank: int
    world: int
    started_dist: bool
    out: Path
    splits: dict[str, Tensor]
    model: FlowModel
    optimizer: torch.optim.Optimizer
    lock: RunLock | None
    state: dict[str, Any] = field(default_factory=dict)
    net: nn.Module | None = None
    stop: StopFlag = field(default_factory=StopFlag)
    in_step: bool = False
    last_checkpoint: float = field(default_factory=time.perf_counter)
    interrupted: bool = False
    clock: float = 0.0

    @property
    def steps_per_epoch(self) -> int:
        return self.splits["train"].shape[0] // self.config.batch_size

    def path(self, name: str) -> Path:
        return self.out / name

    def wall_seconds(self) -> float:
        return time.perf_counter() - self.clock


def train(
    config: TrainConfig, resume: bool = False, progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config`` to its last epoch, or until ``max_steps`` or a stop signal; see the module docstring."""
    run = _set_up(config)
    try:
        _start_or_restore(run, resume)
        with stop_signals_to(run.stop):
            try:
                while run.state["epoch"] < config.epochs:
                    _one_epoch(run, progress)
                    _end_of_epoch(run, progress, on_epoch)
            except _Stop as stop:
                _stopped(run, by_user=stop.by_user)
            except KeyboardInterrupt:
                if run.in_step or run.stop.signal is not None:
                    print(f"Stopped without saving; the last checkpoint in {run.out} stays.", file=sys.stderr)
                    raise
                _stopped(run, by_user=True)  # raised between steps (by a callback): the state is whole
        return _finish(run)
    finally:
        _tear_down(run)


def _set_up(config: TrainConfig) -> _Run:
    """Device, process group, run folder (checked and locked), data, model and optimizer."""
    device = resolve_device(config.device)
    started = init_distributed(device)
    rank, world = rank_and_world()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    out = Path(config.out_dir)
    lock = None
    if rank == 0:
        check_writable(out)
        lock = RunLock(out)
        lock.acquire()
    try:
        splits = {k: v.to(device) for k, v in load_dataset(config).items()}
        torch.manual_seed(config.seed)
        model = build_model(config).to(device)
        optimizer = make_optimizer(model, config.lr, config.betas, config.eps, config.weight_decay)
        if rank == 0:  # model, Adam's two moments; the old file stays until the new one is renamed over it
            check_writable(out, needed_bytes=7 * state_bytes(model))
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            model.log_prob(splits["train"][:8])  # check one batch's values once; the loop runs without checks
        model.train()
    except BaseException:
        if lock is not None:
            lock.release()
        shutdown_distributed(started)
        raise
    return _Run(config=config, device=device, precision=resolve_precision(config.precision, device), rank=rank,
                world=world, started_dist=started, out=out, splits=splits, model=model, optimizer=optimizer,
                lock=lock)


def _fresh_state() -> dict[str, Any]:
    return {"run_id": uuid.uuid4().hex, "epoch": 0, "step_in_epoch": 0, "steps": 0,
            "best_valid_bpd": None, "best_epoch": 0, "history": [], "wall_seconds": 0.0,
            "loss_sum": 0.0, "loss_count": 0}


def _start_or_restore(run: _Run, resume: bool) -> None:
    """Restore the checkpoint (``resume``), or move an older run aside and initialise from the data."""
    ckpt_path = run.path("checkpoint.pt")
    if resume:
        ckpt = load_checkpoint(ckpt_path, map_location=run.device)
        diff = config_differences(ckpt["config"], run.config)
        if diff:
            raise ValueError(f"checkpoint at {ckpt_path} was made with a different config (fields {diff}); "
                             f"start afresh without --resume, or use another --out")
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.state = {**_fresh_state(), **ckpt["state"]}
        set_rng_state(ckpt["rng"], run.device)
        if run.state["best_epoch"]:
            check_best(run.path("best.pt"), run.state["run_id"])
    else:
        if run.rank == 0:
            move_run_aside(run.out, _RUN_FILES)
        run.state = _fresh_state()
        run.state["run_id"] = broadcast_object(run.state["run_id"])
        first = _epoch_order(run.splits["train"].shape[0], run.config.seed, 0)[: run.config.batch_size]
        initialize_from_data(run.model, run.splits["train"][first.to(run.device)])  # before DDP: same on every rank
    run.net = wrap_data_parallel(run.model, run.device)
    run.clock = time.perf_counter() - run.state["wall_seconds"]
    if run.rank == 0:
        st, cfg = run.state, run.config
        print(f"Training {cfg.model} ({cfg.preset}) on {device_name(run.device)}, {run.precision}: "
              f"{run.steps_per_epoch} steps an epoch, epoch {st['epoch'] + 1} step {st['step_in_epoch']} "
              f"of {cfg.epochs} epochs; run folder {run.out}", file=sys.stderr, flush=True)


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of an epoch: a function of ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _one_epoch(run: _Run, progress: bool) -> None:
    """The steps of the current epoch, from where it stands to its end; stops only between steps."""
    cfg, st = run.config, run.state
    order = _epoch_order(run.splits["train"].shape[0], cfg.seed, st["epoch"]).to(run.device)
    loss_sum = torch.tensor(st["loss_sum"], dtype=torch.float64, device=run.device)
    bar = _progress(run.steps_per_epoch, f"epoch {st['epoch'] + 1}/{cfg.epochs}", progress and run.rank == 0)
    bar.update(st["step_in_epoch"])
    t_log, seen = time.perf_counter(), 0
    run.model.train()
    try:
        with value_checks(False):
            while st["step_in_epoch"] < run.steps_per_epoch:
                if run.world == 1 and run.stop.signal is not None:
                    raise _Stop(by_user=True)
                if cfg.max_steps is not None and st["steps"] >= cfg.max_steps:
                    raise _Stop(by_user=False)
                _step(run, order, loss_sum)
                seen += 1
                if seen % cfg.log_every == 0 or st["step_in_epoch"] == run.steps_per_epoch:
                    st["loss_sum"] = loss_sum.item()  # one host sync per log interval
                    _log(run, bar, seen * cfg.batch_size / (time.perf_counter() - t_log))
                    _checkpoint_if_due(run)
    finally:
        if not run.in_step:
            st["loss_sum"] = loss_sum.item()
        bar.close()


def _step(run: _Run, order: Tensor, loss_sum: Tensor) -> None:
    """One step: this process's share of the next batch, the learning rate of the schedule, `train_step`."""
    cfg, st = run.config, run.state
    i, local = st["step_in_epoch"], cfg.batch_size // run.world
    idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size][run.rank * local:(run.rank + 1) * local]
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(cfg.schedule, cfg.lr, st["steps"], cfg.epochs * run.steps_per_epoch)
    run.in_step = True
    loss = train_step(run.model, run.optimizer, run.splits["train"][idx], clip_grad=cfg.clip_grad,
                      precision=run.precision, net=None if run.net is run.model else run.net)
    loss_sum += loss
    st["loss_count"] += 1
    st["step_in_epoch"] += 1
    st["steps"] += 1
    run.in_step = False


def _log(run: _Run, bar: Any, samples_per_s: float) -> None:
    """At a log point: the loss must be finite, the bar moves, and every process agrees on stopping."""
    st = run.state
    mean = st["loss_sum"] / st["loss_count"]
    _check_finite(run, mean)
    bar.set_postfix(bpd=f"{mean:.4f}", img_s=f"{samples_per_s:.0f}")
    bar.update(st["step_in_epoch"] - bar.n)
    _agree_on_stop(run)


def _check_finite(run: _Run, mean_loss: float) -> None:
    if math.isfinite(mean_loss):
        return
    st, ckpt = run.state, run.path("checkpoint.pt")
    kept = f"kept the last good checkpoint in {ckpt}" if ckpt.exists() else "no checkpoint had been written yet"
    raise TrainingDiverged(f"loss became {mean_loss} at epoch {st['epoch'] + 1}, step {st['step_in_epoch']}; "
                           f"stopped and {kept}. Try a lower learning rate or gradient clipping (clip_grad).")


def _agree_on_stop(run: _Run) -> None:
    """Under torchrun every process must stop at the same step: they agree at each log point."""
    if run.world == 1:
        return
    flag = torch.tensor(float(run.stop.signal is not None), device=run.device)
    if all_reduce_sum(flag).item() > 0:
        raise _Stop(by_user=True)


def _end_of_epoch(run: _Run, progress: bool, on_epoch: Callable[[dict[str, float]], None] | None) -> None:
    """Validate, record, keep the best model, checkpoint."""
    st = run.state
    valid_bpd = _validate(run)
    record = {"epoch": st["epoch"] + 1, "train_bpd": st["loss_sum"] / max(st["loss_count"], 1),
              "valid_bpd": valid_bpd, "seconds": run.wall_seconds()}
    st["history"].append(record)
    st.update(epoch=st["epoch"] + 1, step_in_epoch=0, loss_sum=0.0, loss_count=0)
    if st["best_valid_bpd"] is None or valid_bpd < st["best_valid_bpd"]:
        st.update(best_valid_bpd=valid_bpd, best_epoch=st["epoch"])
        if run.rank == 0:
            atomic_save({"config": config_dict(run.config), "run_id": st["run_id"], "model": run.model.state_dict(),
                         "epoch": st["epoch"], "valid_bpd": valid_bpd}, run.path("best.pt"))
    _checkpoint_if_due(run, last_epoch=st["epoch"] == run.config.epochs)
    if run.rank == 0 and progress:
        print(f"epoch {record['epoch']}: train {record['train_bpd']:.4f}, valid {valid_bpd:.4f} bits/dim",
              flush=True)
    if on_epoch is not None:
        on_epoch(record)


def _validate(run: _Run, split: str = "valid", samples: int = 1) -> float:
    """Mean bits/dim on a split; between batches a stop signal is honoured (validation reruns on resume).

    ``samples`` > 1 scores each example by the importance-weighted bound
    (`flowlib.training.evaluate.log_likelihood_sum`); only the final test evaluation uses it.
    """
    data = run.splits[split][run.rank::run.world]
    total = torch.zeros((), dtype=torch.float64, device=run.device)
    with value_checks(False):
        for i, chunk in enumerate(data.split(run.config.eval_batch_size)):
            if run.world == 1 and run.stop.signal is not None and split == "valid":
                raise _Stop(by_user=True)
            total += log_likelihood_sum(run.model, chunk, len(chunk), seed=EVAL_SEED + i, samples=samples)
    count = torch.tensor(float(data.shape[0]), dtype=torch.float64, device=run.device)
    all_reduce_sum(total)
    all_reduce_sum(count)
    return float(bits_per_dim((total / count).item(), run.model.num_dims))


def _save_checkpoint(run: _Run) -> None:
    if run.rank != 0:
        return
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise TrainingDiverged(f"parameters are not finite; kept the last good checkpoint in {run.path('checkpoint.pt')}")
    run.state["wall_seconds"] = run.wall_seconds()
    run.last_checkpoint = time.perf_counter()
    atomic_save({"config": config_dict(run.config), "model": run.model.state_dict(),
                 "optimizer": run.optimizer.state_dict(), "rng": rng_state(run.device), "state": run.state},
                run.path("checkpoint.pt"))


def _checkpoint_if_due(run: _Run, last_epoch: bool = False) -> None:
    """A checkpoint every ``checkpoint_minutes`` (between steps or at an epoch's end) and after the last epoch."""
    if last_epoch or time.perf_counter() - run.last_checkpoint > 60 * run.config.checkpoint_minutes:
        _save_checkpoint(run)


def _stopped(run: _Run, by_user: bool) -> None:
    run.interrupted = by_user
    _save_checkpoint(run)
    if run.rank == 0 and by_user:
        print(f"Stopped: checkpoint saved to {run.path('checkpoint.pt')}; continue with resume=True (--resume).",
              file=sys.stderr)


def _finish(run: _Run) -> TrainResult:
    """After the last epoch: the best model on the test set, and ``results.json``."""
    st = run.state
    finished = st["epoch"] >= run.config.epochs
    test_bpd = test_nats = None
    if finished:
        barrier()  # rank 0 wrote best.pt
        check_best(run.path("best.pt"), st["run_id"])
        best = load_checkpoint(run.path("best.pt"), map_location=run.device)
        run.model.load_state_dict(best["model"])
        test_bpd = _validate(run, "test", samples=run.config.eval_samples)  # config.eval_samples is in results.json
        test_nats = test_bpd * run.model.num_dims * math.log(2)
    result = TrainResult(
        config=config_dict(run.config), run_id=st["run_id"], epochs_done=st["epoch"], steps=st["steps"],
        wall_seconds=st["wall_seconds"] if not finished else run.wall_seconds(),
        best_valid_bpd=st["best_valid_bpd"], best_epoch=st["best_epoch"], test_bpd=test_bpd, test_nats=test_nats,
        history=st["history"], interrupted=run.interrupted, device=device_name(run.device),
        precision=run.precision, out_dir=shown_path(run.out), world_size=run.world)
    if run.rank == 0 and finished:
        atomic_write_text(json.dumps(dataclasses.asdict(result), indent=2), run.path("results.json"))
    return result


def _tear_down(run: _Run) -> None:
    if run.lock is not None:
        run.lock.release()
    shutdown_distributed(run.started_dist)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="step", dynamic_ncols=True, leave=True)

