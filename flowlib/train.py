"""Train NICE or RealNVP by maximum likelihood, from a notebook or the command line.

The objective is the negative log-likelihood in bits per dimension,

.. math:: \\mathcal L(\\theta) = -\\frac{1}{B}\\sum_{b=1}^{B}
   \\frac{\\log p_Z(f_\\theta(x_b)) + \\log|\\det J_{f_\\theta}(x_b)|}{D \\ln 2},

minimised with Adam. Command line::

    python -m flowlib.train nice --dataset mnist --preset paper
    python -m flowlib.train realnvp --dataset mnist --preset cpu --resume
    torchrun --nproc_per_node 2 -m flowlib.train nice --preset paper   # data parallel

Presets: ``paper`` (the papers' setups, for a GPU), ``cpu`` (about 30 minutes
on a 2-core CPU), ``quick`` (seconds, for CI). From Python::

    from flowlib.train import TrainConfig, train
    result = train(TrainConfig(model="nice", preset="cpu"))

What the trainer guarantees:

* **Nothing lost.** A checkpoint (model, optimizer, RNG states, position in
  the epoch, history) is written atomically (temporary file, then rename)
  every ``checkpoint_minutes``, at the end of every epoch and on Ctrl-C.
  ``resume=True`` continues exactly where it stopped: the data order of an
  epoch depends only on ``(seed, epoch)`` and the RNG states are restored.
* **Best model kept.** The model with the lowest validation bits/dim is saved
  to ``best.pt``; the test set is evaluated with it at the end.
* **Divergence stops cleanly.** A NaN or Inf loss raises `TrainingDiverged`;
  the last good checkpoint is left untouched.
* **Loads safely.** Checkpoints hold only tensors and plain containers, so
  ``torch.load(path, weights_only=True)`` reads them.
* **Fast.** Data lives on the device; the hot loop does not read values back
  to the host except every ``log_every`` steps (progress, finiteness).
* **Data parallel.** Under ``torchrun`` the global batch is split over the
  processes (DistributedDataParallel; NCCL on GPUs, gloo on CPU), so a run on
  N processes follows the single-process run with the same global batch.
  Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .flow import value_checks
from .models import FlowModel, nice, realnvp, realnvp_image

__all__ = [
    "TrainConfig", "TrainResult", "TrainingDiverged", "PRESETS", "make_config", "make_optimizer",
    "build_model", "load_dataset", "train", "evaluate", "load_model", "run_or_load", "main",
]

ROOT = Path(__file__).resolve().parent.parent


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint was kept."""


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint).

    ``model`` is ``"nice"`` or ``"realnvp"``; ``dataset`` is ``"mnist"`` or a
    2D toy density name (``flowlib.toy.TOY_DENSITIES``).
    """

    model: str = "nice"
    dataset: str = "mnist"
    preset: str = "cpu"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_grad: float | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train_size: int | None = None
    eval_size: int | None = None
    eval_batch_size: int = 1000
    seed: int = 0
    out_dir: str = ""
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    max_steps: int | None = None
    device: str = "auto"


PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # NICE (Dinh et al. 2014): 4 additive couplings, 5x1000 ReLU, logistic prior,
    # Adam(lr 1e-3, beta1 0.9, beta2 0.01, eps 1e-4). Batch size and epoch count
    # are not in the paper's main text; we use 200 and 1500 with the best
    # validation epoch kept.
    ("nice", "paper"): dict(epochs=1500, batch_size=200, lr=1e-3, betas=(0.9, 0.01), eps=1e-4,
                            checkpoint_minutes=10.0, log_every=100),
    # Same architecture and optimizer, fewer epochs: about 30 minutes on 2 cores.
    ("nice", "cpu"): dict(epochs=25, batch_size=200, lr=1e-3, betas=(0.9, 0.01), eps=1e-4),
    ("nice", "quick"): dict(epochs=2, batch_size=100, lr=1e-3, betas=(0.9, 0.01), eps=1e-4,
                            model_kwargs=dict(hidden=64, num_hidden_layers=2),
                            train_size=1000, eval_size=500, log_every=5),
    # RealNVP (Dinh et al. 2016): multi-scale, residual s/t nets with 64 features,
    # Adam(lr 1e-3), L2 5e-5, batch 64.
    ("realnvp", "paper"): dict(epochs=100, batch_size=64, lr=1e-3, weight_decay=5e-5, clip_grad=100.0,
                               model_kwargs=dict(hidden_channels=64, num_blocks=8),
                               checkpoint_minutes=10.0, log_every=100, eval_batch_size=500),
    ("realnvp", "cpu"): dict(epochs=4, batch_size=64, lr=1e-3, weight_decay=5e-5, clip_grad=100.0,
                             model_kwargs=dict(hidden_channels=32, num_blocks=2), eval_batch_size=500),
    ("realnvp", "quick"): dict(epochs=2, batch_size=32, lr=1e-3, clip_grad=100.0,
                               model_kwargs=dict(hidden_channels=8, num_blocks=1),
                               train_size=256, eval_size=128, log_every=2, eval_batch_size=128),
    # 2D toy densities (vector models).
    ("nice", "toy"): dict(epochs=20, batch_size=256, lr=1e-3,
                          model_kwargs=dict(num_couplings=6, hidden=64, num_hidden_layers=2)),
    ("realnvp", "toy"): dict(epochs=20, batch_size=256, lr=1e-3, model_kwargs=dict(hidden=64)),
}


def make_config(model: str = "nice", preset: str = "cpu", dataset: str = "mnist", **overrides: Any) -> TrainConfig:
    """A `TrainConfig` from a preset, with any field overridden.

    >>> make_config("nice", "paper").betas
    (0.9, 0.01)
    """
    kind = preset if dataset == "mnist" else "toy"
    if (model, kind) not in PRESETS:
        choices = sorted({p for (m, p) in PRESETS if m == model and p != "toy"})
        raise ValueError(f"unknown model/preset {model!r}/{preset!r}; presets for {model!r}: {choices}")
    values = dict(PRESETS[(model, kind)])
    if dataset != "mnist" and preset == "quick":
        values.update(epochs=2, train_size=2000, eval_size=1000, log_every=5)
    values.update(overrides)
    values.setdefault("out_dir", str(ROOT / "runs" / f"{model}-{dataset}-{preset}"))
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
    values["betas"] = tuple(values.get("betas", (0.9, 0.999)))
    return TrainConfig(model=model, preset=preset, dataset=dataset, **values)


def build_model(config: TrainConfig) -> FlowModel:
    """The model a config describes (MNIST: 784-d NICE or multi-scale RealNVP)."""
    kw = dict(config.model_kwargs)
    if config.dataset == "mnist":
        if config.model == "nice":
            return nice(784, dequantize=True, **kw)
        if config.model == "realnvp":
            return realnvp_image((1, 28, 28), **kw)
    else:
        if config.model == "nice":
            return nice(2, prior="normal", **kw)
        if config.model == "realnvp":
            return realnvp(2, **kw)
    raise ValueError(f"model must be 'nice' or 'realnvp', got {config.model!r}")


def load_dataset(config: TrainConfig) -> dict[str, Tensor]:
    """``{"train", "valid", "test"}`` tensors, cut to ``train_size``/``eval_size``."""
    if config.dataset == "mnist":
        from .data import mnist_splits

        splits = mnist_splits()
        if config.model == "nice":
            splits = {k: v.flatten(1) for k, v in splits.items()}
    else:
        from .toy import sample_toy

        n_eval = config.eval_size or 10000
        n_train = config.train_size or 50000
        splits = {
            "train": sample_toy(config.dataset, n_train, seed=config.seed),
            "valid": sample_toy(config.dataset, n_eval, seed=config.seed + 1),
            "test": sample_toy(config.dataset, n_eval, seed=config.seed + 2),
        }
    if config.train_size:
        splits["train"] = splits["train"][: config.train_size]
    if config.eval_size:
        splits["valid"] = splits["valid"][: config.eval_size]
        splits["test"] = splits["test"][: config.eval_size]
    return splits


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam with the config's hyperparameters, as a fused kernel.

    The fused implementation updates every parameter in one pass over memory
    (the default CPU implementation makes several), which matters for NICE's
    19 million parameters; the arithmetic is Adam's all the same.
    """
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps,
                            weight_decay=config.weight_decay, fused=True)


@dataclass
class TrainResult:
    """What a finished (or interrupted) run reports."""

    config: dict[str, Any]
    epochs_done: int
    steps: int
    wall_seconds: float
    best_valid_bpd: float
    test_bpd: float | None
    test_nats: float | None
    history: list[dict[str, float]]
    interrupted: bool
    device: str
    out_dir: str
    world_size: int = 1

    def summary(self) -> str:
        test = "n/a" if self.test_bpd is None else f"{self.test_bpd:.4f} bits/dim ({self.test_nats:.2f} nats)"
        return (f"{self.config['model']} {self.config['preset']} on {self.device}: {self.epochs_done} epochs, "
                f"{self.steps} steps, {self.wall_seconds / 60:.1f} min; best valid {self.best_valid_bpd:.4f} "
                f"bits/dim; test {test}")


# ----------------------------------------------------------------------------- distributed


def _dist_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; ``(0, 1, 0)`` outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _maybe_init_distributed(device: torch.device) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: FlowModel, data: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """Mean negative log-likelihood on ``data``: ``(bits per dim, nats per example)``.

    Runs in eval mode, in batches moved to the model's device. Under torchrun each process evaluates its shard and the sums are reduced.
    """
    was_training = model.training
    model.eval()
    rank, world, _ = _dist_info()
    shard = data[rank::world]
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, shard.shape[0], batch_size):
        total += model.log_prob(shard[start:start + batch_size].to(device)).double().sum()
    count = torch.tensor(float(shard.shape[0]), dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    model.train(was_training)
    nats = -(total / count).item()
    return nats / (model.num_dims * math.log(2)), nats


# ----------------------------------------------------------------------------- checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[FlowModel, TrainConfig]:
    """Rebuild a model from ``best.pt`` or ``checkpoint.pt`` (loaded with ``weights_only=True``)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = dict(ckpt["config"])
    cfg["betas"] = tuple(cfg["betas"])
    config = TrainConfig(**{k: v for k, v in cfg.items() if k in fields})
    model = build_model(config)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config


# ----------------------------------------------------------------------------- training


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of an epoch: a function of ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="step", dynamic_ncols=True, leave=True)


def train(
    config: TrainConfig, resume: bool = False, progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config`` to completion (or until ``max_steps``/Ctrl-C); see the module docstring."""
    device = _resolve_device(config.device)
    started_dist = _maybe_init_distributed(device)
    rank, world, _ = _dist_info()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    out = Path(config.out_dir)
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    splits = {k: v.to(device) for k, v in load_dataset(config).items()}
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, config)
    # Validate one batch's values once; the hot loop then runs without value checks (no host syncs).
    with torch.no_grad():
        model.eval()
        model.log_prob(splits["train"][:8])
    model.train()
    state = {"epoch": 0, "step_in_epoch": 0, "steps": 0, "best_valid_bpd": math.inf,
             "history": [], "wall_seconds": 0.0}
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        saved = {k: v for k, v in ckpt["config"].items() if k not in _RESUMABLE_CHANGES}
        mine = {k: v for k, v in dataclasses.asdict(config).items() if k in saved}
        mine["betas"] = list(mine["betas"])
        saved["betas"] = list(saved["betas"])
        if saved != mine:
            diff = sorted(k for k in saved if saved[k] != mine.get(k))
            raise ValueError(f"checkpoint at {ckpt_path} was made with a different config (fields {diff})")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.update({k: ckpt[k] for k in state})
        _set_rng_state(ckpt["rng"], device)
    elif ckpt_path.exists() and rank == 0:
        print(f"Starting afresh; an earlier checkpoint in {out} will be overwritten "
              f"(pass resume=True / --resume to continue it).", file=sys.stderr)

    if not resume:
        # Data-dependent initialisation (ActNorm) from the first global batch,
        # before DDP wraps the model, so every process starts from the same parameters.
        first = _epoch_order(splits["train"].shape[0], config.seed, 0)[: config.batch_size]
        with torch.no_grad():
            model.log_prob(splits["train"][first.to(device)])

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint() -> None:
        if rank != 0:
            return
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingDiverged(f"parameters are not finite; kept the last good checkpoint in {ckpt_path}")
        _atomic_save({"config": _config_dict(config), "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "rng": _rng_state(device), **state}, ckpt_path)

    train_x = splits["train"]
    n_train = train_x.shape[0]
    steps_per_epoch = n_train // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {config.batch_size} is larger than the training set ({n_train})")
    local_batch = config.batch_size // world
    scale = 1.0 / (model.num_dims * math.log(2))
    interrupted = False
    t_start = time.perf_counter() - state["wall_seconds"]
    last_ckpt = time.perf_counter()

    try:
        with value_checks(False):
            while state["epoch"] < config.epochs:
                epoch = state["epoch"]
                order = _epoch_order(n_train, config.seed, epoch).to(device)
                bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", progress and rank == 0)
                bar.update(state["step_in_epoch"])
                loss_sum = torch.zeros((), device=device)
                seen, t_log = 0, time.perf_counter()
                model.train()
                while state["step_in_epoch"] < steps_per_epoch:
                    if config.max_steps is not None and state["steps"] >= config.max_steps:
                        raise _StopRun
                    i = state["step_in_epoch"]
                    idx = order[i * config.batch_size:(i + 1) * config.batch_size][rank * local_batch:(rank + 1) * local_batch]
                    loss = -_ddp_log_prob(net, model, train_x[idx]).mean() * scale
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.clip_grad:
                        nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                    optimizer.step()
                    loss_sum += loss.detach()
                    seen += 1
                    state["step_in_epoch"] += 1
                    state["steps"] += 1
                    if seen % config.log_every == 0 or state["step_in_epoch"] == steps_per_epoch:
                        mean_loss = (loss_sum / seen).item()  # one host sync per log interval
                        if not math.isfinite(mean_loss):
                            raise TrainingDiverged(
                                f"loss became {mean_loss} at epoch {epoch + 1}, step {state['step_in_epoch']}; "
                                f"stopped and kept the last good checkpoint in {ckpt_path}. Try a lower "
                                f"learning rate or gradient clipping (clip_grad).")
                        rate = seen * config.batch_size / (time.perf_counter() - t_log)
                        bar.set_postfix(bpd=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
                        bar.update(state["step_in_epoch"] - bar.n)
                        if time.perf_counter() - last_ckpt > 60 * config.checkpoint_minutes:
                            state["wall_seconds"] = time.perf_counter() - t_start
                            checkpoint()
                            last_ckpt = time.perf_counter()
                bar.close()
                train_bpd = (loss_sum / max(seen, 1)).item()
                valid_bpd, _ = evaluate(model, splits["valid"], config.eval_batch_size)
                record = {"epoch": epoch + 1, "train_bpd": train_bpd, "valid_bpd": valid_bpd,
                          "seconds": time.perf_counter() - t_start}
                state["history"].append(record)
                state["epoch"] += 1
                state["step_in_epoch"] = 0
                if valid_bpd < state["best_valid_bpd"]:
                    state["best_valid_bpd"] = valid_bpd
                    if rank == 0:
                        _atomic_save({"config": _config_dict(config), "model": model.state_dict(),
                                      "epoch": epoch + 1, "valid_bpd": valid_bpd}, best_path)
                state["wall_seconds"] = time.perf_counter() - t_start
                checkpoint()
                last_ckpt = time.perf_counter()
                if rank == 0 and progress:
                    print(f"epoch {epoch + 1}: train {train_bpd:.4f}, valid {valid_bpd:.4f} bits/dim", flush=True)
                if on_epoch is not None:
                    on_epoch(record)
    except (KeyboardInterrupt, _StopRun) as stop:
        interrupted = isinstance(stop, KeyboardInterrupt)
        state["wall_seconds"] = time.perf_counter() - t_start
        checkpoint()
        if rank == 0 and interrupted:
            print(f"\nInterrupted: checkpoint saved to {ckpt_path}; continue with resume=True (--resume).",
                  file=sys.stderr)

    test_bpd = test_nats = None
    finished = state["epoch"] >= config.epochs
    if finished and world > 1:
        dist.barrier()
    if finished and best_path.exists():
        best = torch.load(best_path, map_location=device, weights_only=True)
        model.load_state_dict(best["model"])
        test_bpd, test_nats = evaluate(model, splits["test"], config.eval_batch_size)
    result = TrainResult(
        config=_config_dict(config), epochs_done=state["epoch"], steps=state["steps"],
        wall_seconds=state["wall_seconds"], best_valid_bpd=state["best_valid_bpd"], test_bpd=test_bpd,
        test_nats=test_nats, history=state["history"], interrupted=interrupted, device=_device_name(device),
        out_dir=str(out), world_size=world)
    if rank == 0 and finished:
        (out / "results.json").write_text(json.dumps(dataclasses.asdict(result), indent=2))
    if started_dist:
        dist.destroy_process_group()
    return result


#: Config fields that may change when resuming (more epochs, another device, ...).
_RESUMABLE_CHANGES = ("epochs", "max_steps", "out_dir", "device", "checkpoint_minutes", "log_every")


class _StopRun(Exception):
    """Internal: ``max_steps`` reached."""


def _ddp_log_prob(net: nn.Module, model: FlowModel, x: Tensor) -> Tensor:
    if net is model:
        return model.log_prob(x)
    z, log_det = net(x)  # DDP hooks run through its forward
    return model.prior.log_prob(z) + log_det


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["betas"] = list(d["betas"])
    return d


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def run_or_load(config: TrainConfig, progress: bool = True) -> tuple[FlowModel, TrainResult]:
    """The chapters' entry point: load a finished run, resume an unfinished one, or train.

    A run is finished when ``out_dir`` holds ``results.json`` and ``best.pt``
    made with the same config; the best model is returned in eval mode.
    """
    out = Path(config.out_dir)
    results, best, ckpt = out / "results.json", out / "best.pt", out / "checkpoint.pt"
    if results.exists() and best.exists():
        saved = json.loads(results.read_text())
        same = {k: v for k, v in saved["config"].items() if k not in _RESUMABLE_CHANGES}
        mine = {k: v for k, v in _config_dict(config).items() if k in same}
        if same == mine and saved["epochs_done"] >= config.epochs:
            if progress:
                shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
                print(f"Loaded the finished run in {shown} (delete it to train again).")
            model, _ = load_model(best, map_location=_resolve_device(config.device))
            return model, TrainResult(**saved)
    result = train(config, resume=ckpt.exists(), progress=progress)
    if not best.exists():
        raise RuntimeError(f"no epoch finished yet in {out}; run again to resume from the checkpoint")
    model, _ = load_model(best, map_location=_resolve_device(config.device))
    return model, result


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m flowlib.train MODEL [--dataset mnist] [--preset cpu] [--resume] ...``"""
    p = argparse.ArgumentParser(prog="python -m flowlib.train", description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=["nice", "realnvp"])
    p.add_argument("--dataset", default="mnist", help="mnist or a 2D toy density name")
    p.add_argument("--preset", default="cpu", choices=["paper", "cpu", "quick"])
    p.add_argument("--out", help="run folder (default runs/MODEL-DATASET-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps in total")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                      max_steps=args.max_steps, device=args.device, out_dir=args.out).items()
                 if v is not None}
    config = make_config(args.model, args.preset, args.dataset, **overrides)
    try:
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if _dist_info()[0] == 0:
        print(result.summary())
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
