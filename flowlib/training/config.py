"""Training runs as data: a `TrainConfig`, the presets, and the model and data a config describes.

A run is fully described by its config: the model and its size, the data,
the optimizer (Adam with ``lr``, ``betas``, ``eps``), the schedule, the batch,
the number of epochs, the seed and the precision. The config is saved in
every checkpoint, in ``best.pt`` and in ``results.json``, and compared in one
place (`config_differences`) when a run is resumed or loaded.

Adam's betas are today's decay rates. The NICE paper (Dinh et al. 2015,
section 5.1) gives "momentum 0.9, β2 = 0.01, ε = 1e-4" in the notation of
the first arXiv versions of Adam, where β is one minus the decay rate (those
versions' defaults were β1 = 0.1, β2 = 0.001, today's 0.9 and 0.999): in
`torch.optim.Adam` it is ``betas=(0.9, 0.99)``. Its ε is for a loss in nats
per example; the trainer's loss is in bits per dimension, :math:`1/(784 \\ln 2)`
of it, and Adam's steps stay the same only if ε shrinks by that factor too,
so the ``paper`` preset's ``eps`` is :math:`10^{-4}/(784 \\ln 2) \\approx 1.84 \\cdot 10^{-7}`.

>>> make_config("nice", "paper").betas, f"{make_config('nice', 'paper').eps:.3g}"
((0.9, 0.99), '1.84e-07')
>>> Path(make_config("nice", "cpu", lr=3e-3, seed=1).out_dir).name
'nice-mnist-cpu-lr0.003-seed1'
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..files import runs_dir, shown_path
from .presets import MODELS, PRESET_NAMES, PRESETS
from ..datasets.toy import TOY_DENSITIES
from .fit import SCHEDULES, check_clip_grad, check_optimizer, check_seed
from .precision import MATMUL_PRECISIONS, PRECISIONS
from ..flow_model import FlowModel
from ..models import glow, nice, realnvp_image, toy_model
__all__ = [
    "TrainConfig", "TrainResult", "RESUMABLE_FIELDS", "make_config", "config_dict", "config_from_dict",
    "config_differences", "build_model", "load_dataset",
]



@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint).

    ``model`` is ``"nice"``, ``"realnvp"``, ``"glow"`` (MNIST only) or one of the
    2D toy kinds ``"maf"``, ``"spline_coupling"``, ``"spline_ar"`` (toys only);
    ``dataset`` is ``"mnist"`` or a 2D toy density name
    (``flowlib.datasets.toy.TOY_DENSITIES``). ``precision`` is
    ``"auto"`` (bf16 where the hardware runs it natively), ``"bf16"`` or
    ``"fp32"``; ``matmul_precision`` is ``"fp32"`` (true float32 matmuls and
    convolutions outside autocast, cuDNN's included) or ``"tf32"`` (TensorFloat-32
    on GPUs that have it; `flowlib.training.precision.matmul_precision`), and
    ``results.json`` records the one in effect; ``optimizer`` is ``"adam"`` (with ``betas``, ``eps``,
    ``weight_decay``) or ``"rmsprop_momentum"`` (NICE's released code, `flowlib.training.rmsprop_momentum`);
    ``schedule`` is ``"constant"``, ``"cosine"`` (to ``min_lr``, 0 unless set, over the run) or ``"exponential"``
    (divided by 1.0005 per update down to a tenth, NICE's released code; `flowlib.training.fit.learning_rate`),
    each multiplied by a linear warm-up over the first ``warmup_epochs`` epochs when that is above 0;
    ``compile`` runs each step's loss through ``torch.compile`` (`flowlib.training.fit.compiled_loss`; its
    compile time counts in the run's wall time). ``average_epochs``, when set, scores and keeps a Polyak average
    of the weights over about that many epochs instead of the trained weights (`flowlib.training.averaging`;
    NICE's ``cpu`` preset sets 1, and None, ``--average-epochs 0`` on the command line, turns it off).
    ``device`` is ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    ``max_minutes`` stops the run, with a checkpoint that ``--resume``
    continues exactly, after that many minutes of this call (timed from its
    start or resume, after at least one step; ``max_steps`` counts steps of the
    whole run instead).
    ``eval_samples`` is the :math:`K` of the final test evaluation only
    (`flowlib.training.evaluate.log_likelihood_sum`): 1 is the plain dequantization bound,
    :math:`K > 1` the importance-weighted bound
    :math:`\\log \\frac1K \\sum_k p(x + u_k) / q(u_k \\mid x)`, tighter and
    :math:`K` times slower; validation (which picks the best epoch) always
    uses 1. It is not a resumable field: a finished run's ``results.json``
    holds the test number of one :math:`K`, and a run is never loaded under
    another (``-isK`` in the default folder name keeps them apart).

    Every field is checked here, where the config is made (by hand, by
    `make_config`, or from a saved dict): a bad value raises a `ValueError`
    that names the field, what it may be and what came. Only what depends on
    the machine (is there a CUDA GPU?) waits for the run to start.
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
    optimizer: str = "adam"
    schedule: str = "constant"
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    precision: str = "auto"
    matmul_precision: str = "fp32"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train_size: int | None = None
    eval_size: int | None = None
    eval_batch_size: int = 1000
    eval_samples: int = 1
    seed: int = 0
    out_dir: str = ""
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    max_steps: int | None = None
    max_minutes: float | None = None
    device: str = "auto"
    compile: bool = False
    average_epochs: float | None = None

    def __post_init__(self) -> None:
        _check_model_and_dataset(self.model, self.dataset)
        _check_choice("preset", self.preset, PRESET_NAMES)
        for name in ("epochs", "batch_size", "eval_batch_size", "eval_samples", "log_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("train_size", "eval_size", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        check_optimizer(self.optimizer, self.lr, self.betas, self.eps, self.weight_decay)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        check_clip_grad(self.clip_grad)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_min_lr(self.min_lr, self.lr, self.schedule)
        _check_warmup_epochs(self.warmup_epochs, self.epochs)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)
        if self.average_epochs is not None:
            _check_positive("average_epochs", self.average_epochs)
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if not isinstance(self.model_kwargs, dict) or not all(isinstance(k, str) for k in self.model_kwargs):
            raise ValueError(f"model_kwargs must be a dict of the model's keyword arguments, got {self.model_kwargs!r}")
        check_seed(self.seed)
        if not isinstance(self.out_dir, (str, os.PathLike)):
            raise ValueError(f"out_dir must be a path (str), got {self.out_dir!r}")
        self.out_dir = str(self.out_dir)
        _check_positive("checkpoint_minutes", self.checkpoint_minutes)
        if self.max_minutes is not None:
            _check_positive("max_minutes", self.max_minutes)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports; ``results.json`` holds it."""

    config: dict[str, Any]
    run_id: str
    epochs_done: int
    steps: int
    wall_seconds: float
    best_valid_bpd: float | None
    best_epoch: int
    test_bpd: float | None
    test_nats: float | None
    history: list[dict[str, float]]
    interrupted: bool
    device: str
    precision: str
    out_dir: str
    world_size: int = 1
    torch_version: str = torch.__version__
    #: float32 matmuls and convolutions as they ran: "fp32" or "tf32" (None in files written before it was recorded)
    matmul_precision: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def summary(self) -> str:
        test = "n/a" if self.test_bpd is None else f"{self.test_bpd:.4f} bits/dim ({self.test_nats:.2f} nats)"
        samples = self.config.get("eval_samples", 1)
        if self.test_bpd is not None and samples > 1:
            test += f", {samples} importance samples"
        best = "n/a" if self.best_valid_bpd is None else f"{self.best_valid_bpd:.4f}"
        arithmetic = self.precision + (", tf32 matmuls" if self.matmul_precision == "tf32" else "")
        return (f"{self.config['model']} {self.config['preset']} on {self.device} ({arithmetic}): "
                f"{self.epochs_done} epochs, {self.steps} steps, {self.wall_seconds / 60:.1f} min; "
                f"best valid {best} bits/dim (epoch {self.best_epoch}); test {test}")


#: Fields that may change when a run is resumed (more epochs, another device, ...).
RESUMABLE_FIELDS = ("epochs", "max_steps", "max_minutes", "out_dir", "device", "checkpoint_minutes", "log_every")

#: The form of ``device``; whether that device exists is checked when a run starts.
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_warmup_epochs(warmup_epochs: Any, epochs: int) -> None:
    """``warmup_epochs``: how long the linear warm-up of the learning rate lasts, a number in ``[0, epochs]``."""
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, Real) or not 0.0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be a number in [0, epochs] = [0, {epochs}], got {warmup_epochs!r}")


def _check_min_lr(min_lr: Any, lr: float, schedule: str) -> None:
    """``min_lr``: where the cosine ends, a number in ``[0, lr)``; it belongs to the cosine schedule only."""
    if isinstance(min_lr, bool) or not isinstance(min_lr, Real) or not 0.0 <= min_lr < lr:
        raise ValueError(f"min_lr must be a number in [0, lr) = [0, {lr:g}), got {min_lr!r}")
    if min_lr > 0 and schedule != "cosine":
        raise ValueError(f"min_lr is where the cosine schedule ends; schedule is {schedule!r}, not 'cosine'")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_model_and_dataset(model: str, dataset: str) -> None:
    """``model`` one of `MODELS`; ``dataset`` ``"mnist"`` or a 2D toy density; glow takes only MNIST, the kinds
    with only a ``toy`` preset (MAF, the spline flows) only the toys."""
    _check_choice("model", model, MODELS)
    if dataset == "mnist" and not any(m == model and p != "toy" for (m, p) in PRESETS):
        image_models = tuple(m for m in MODELS if any(m == n and p != "toy" for (n, p) in PRESETS))
        raise ValueError(f"{model} is a model of the 2D toy densities: dataset must be one of {TOY_DENSITIES}, "
                         f"got 'mnist' (MNIST takes the models {image_models})")
    if dataset != "mnist" and (model, "toy") not in PRESETS:
        toy_models = tuple(m for m in MODELS if (m, "toy") in PRESETS)
        raise ValueError(f"{model} is an image model: dataset must be 'mnist', got {dataset!r} "
                         f"(the 2D toy densities take the models {toy_models})")
    if not isinstance(dataset, str) or (dataset != "mnist" and dataset not in TOY_DENSITIES):
        raise ValueError(f"dataset must be 'mnist' or a 2D toy density {TOY_DENSITIES}, got {dataset!r}")

#: How a changed field shows in the default run folder's name.
_NAME_FIELDS = {"epochs": "epochs", "batch_size": "batch", "lr": "lr", "betas": "betas", "eps": "eps",
                "weight_decay": "wd", "clip_grad": "clip", "optimizer": "", "schedule": "", "min_lr": "minlr",
                "warmup_epochs": "warmup",
                "precision": "", "matmul_precision": "", "model_kwargs": "",
                "train_size": "train", "eval_size": "eval", "seed": "seed", "eval_samples": "is", "compile": "compile",
                "average_epochs": "avg"}


def make_config(model: str = "nice", preset: str = "cpu", dataset: str = "mnist", **overrides: Any) -> TrainConfig:
    """A `TrainConfig` from a preset, with any field overridden.

    The default run folder, ``runs/MODEL-DATASET-PRESET``, gets a suffix for
    every field that differs from the preset (``-lr0.003``, ``-seed1``...), so
    two different runs never share a folder by default.
    """
    _check_model_and_dataset(model, dataset)
    kind = preset if dataset == "mnist" else "toy"
    if (model, kind) not in PRESETS:
        choices = sorted({p for (m, p) in PRESETS if m == model and p != "toy"})
        raise ValueError(f"unknown model/preset {model!r}/{preset!r}; presets for {model!r}: {choices}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
    values = dict(PRESETS[(model, kind)])
    if dataset != "mnist" and preset == "quick":
        values.update(epochs=2, train_size=2000, eval_size=1000, log_every=5)
    base = TrainConfig(model=model, preset=preset, dataset=dataset, **values)
    values.update(overrides)
    config = TrainConfig(model=model, preset=preset, dataset=dataset, **values)
    if not config.out_dir:
        config.out_dir = str(runs_dir() / (f"{model}-{dataset}-{preset}" + _name_suffix(base, config)))
    return config


def _name_suffix(base: TrainConfig, config: TrainConfig) -> str:
    parts = []
    for name, short in _NAME_FIELDS.items():
        value = getattr(config, name)
        if value == getattr(base, name):
            continue
        if isinstance(value, bool) or value is None:
            parts.append(short if value else f"no{short}")  # compile off, or a preset's average turned off
            continue
        if isinstance(value, dict):  # the model's keyword arguments that differ from the preset's, and those dropped
            preset_value = getattr(base, name)
            changed = [f"{k}{v}" for k, v in sorted(value.items()) if k not in preset_value or preset_value[k] != v]
            parts += changed + [f"no{k}" for k in sorted(preset_value) if k not in value]
            continue
        elif isinstance(value, tuple):
            value = ",".join(f"{v:g}" for v in value)
        parts.append(f"{short}{value:g}" if isinstance(value, float) else f"{short}{value}")
    return "".join("-" + p for p in parts)


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    d = dataclasses.asdict(config)
    d["betas"] = list(d["betas"])
    d["out_dir"] = shown_path(d["out_dir"])  # relative to the workspace: files stay valid when it moves
    return d


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Inverse of `config_dict` (unknown keys from older versions are dropped)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


def config_differences(saved: dict[str, Any] | TrainConfig, mine: TrainConfig) -> list[str]:
    """Names of the fields in which two configs differ, ignoring `RESUMABLE_FIELDS`.

    >>> config_differences(make_config("nice", "cpu"), make_config("nice", "cpu", epochs=50, lr=0.01))
    ['lr']
    """
    a = config_dict(saved if isinstance(saved, TrainConfig) else config_from_dict(saved))
    b = config_dict(mine)
    return sorted(k for k in b if k not in RESUMABLE_FIELDS and a.get(k) != b[k])


def build_model(config: TrainConfig) -> FlowModel:
    """The model a config describes (MNIST: 784-d NICE or multi-scale RealNVP; toys: 2-d)."""
    kw = dict(config.model_kwargs)
    if config.dataset == "mnist":
        if config.model == "nice":
            return nice(784, dequantize=True, **kw)
        if config.model == "glow":
            return glow((1, 28, 28), **kw)
        return realnvp_image((1, 28, 28), **kw)
    return toy_model(config.model, seed=config.seed, **kw)


def load_dataset(config: TrainConfig) -> dict[str, Tensor]:
    """``{"train", "valid", "test"}`` tensors, cut to ``train_size``/``eval_size``."""
    if config.dataset == "mnist":
        from ..datasets.mnist import mnist_splits

        splits = mnist_splits()
        if config.model == "nice":
            splits = {k: v.flatten(1) for k, v in splits.items()}
    else:
        from ..datasets.toy import sample_toy

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
    if splits["train"].shape[0] < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} is larger than the training set "
                         f"({splits['train'].shape[0]} examples)")
    return splits
