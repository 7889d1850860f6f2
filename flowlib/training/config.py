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
`torch.optim.Adam` it is ``betas=(0.9, 0.99), eps=1e-4``.

>>> make_config("nice", "paper").betas
(0.9, 0.99)
>>> Path(make_config("nice", "cpu", lr=3e-3, seed=1).out_dir).name
'nice-mnist-cpu-lr0.003-seed1'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..files import runs_dir, shown_path
from .fit import SCHEDULES
from .precision import PRECISIONS
from ..flow_model import FlowModel
from ..models import glow, nice, realnvp_image, toy_model
__all__ = [
    "TrainConfig", "TrainResult", "MODELS", "PRESETS", "RESUMABLE_FIELDS", "make_config", "config_dict", "config_from_dict",
    "config_differences", "build_model", "load_dataset",
]



@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint).

    ``model`` is ``"nice"``, ``"realnvp"`` or ``"glow"`` (MNIST only);
    ``dataset`` is ``"mnist"`` or a 2D toy density name
    (``flowlib.datasets.toy.TOY_DENSITIES``). ``precision`` is
    ``"auto"`` (bf16 where the hardware runs it natively), ``"bf16"`` or
    ``"fp32"``; ``schedule`` is ``"constant"`` or ``"cosine"`` (to 0 over the
    run). ``device`` is ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    ``eval_samples`` is the :math:`K` of the final test evaluation only
    (`flowlib.training.evaluate.log_likelihood_sum`): 1 is the plain dequantization bound,
    :math:`K > 1` the importance-weighted bound
    :math:`\\log \\frac1K \\sum_k p(x + u_k) / q(u_k \\mid x)`, tighter and
    :math:`K` times slower; validation (which picks the best epoch) always
    uses 1. It is not a resumable field: a finished run's ``results.json``
    holds the test number of one :math:`K`, and a run is never loaded under
    another (``-isK`` in the default folder name keeps them apart).
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
    schedule: str = "constant"
    precision: str = "auto"
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
    device: str = "auto"

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.model == "glow" and self.dataset != "mnist":
            raise ValueError(f"glow is an image model: dataset must be 'mnist', got {self.dataset!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "eval_samples", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("train_size", "eval_size", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


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
        return (f"{self.config['model']} {self.config['preset']} on {self.device} ({self.precision}): "
                f"{self.epochs_done} epochs, {self.steps} steps, {self.wall_seconds / 60:.1f} min; "
                f"best valid {best} bits/dim (epoch {self.best_epoch}); test {test}")


#: Fields that may change when a run is resumed (more epochs, another device, ...).
RESUMABLE_FIELDS = ("epochs", "max_steps", "out_dir", "device", "checkpoint_minutes", "log_every")

_NICE_ADAM = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-4)

#: The models the trainer builds (`build_model`).
MODELS = ("nice", "realnvp", "glow")

PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # NICE (Dinh et al. 2015, section 5.1): 4 additive couplings, 5 x 1000 ReLU, logistic prior,
    # Adam with lr 1e-3, momentum 0.9, beta2 "0.01" (= betas (0.9, 0.99) today), eps 1e-4.
    # Batch 200 and up to 1500 epochs as in the authors' released code, best validation kept.
    ("nice", "paper"): dict(epochs=1500, batch_size=200, checkpoint_minutes=10.0, log_every=250, **_NICE_ADAM),
    # Same model and optimizer, about 30 minutes on 2 cores: bf16 nets where the CPU has them (2,285 against
    # 1,298 samples/s in fp32, 0.002 bits/dim apart after 1,250 steps: benchmarks/results/precision_check.md),
    # 65 epochs with the learning rate on a cosine to 0.
    ("nice", "cpu"): dict(epochs=65, batch_size=200, schedule="cosine", **_NICE_ADAM),
    ("nice", "quick"): dict(epochs=2, batch_size=100, model_kwargs=dict(hidden=64, num_hidden_layers=2),
                            train_size=1000, eval_size=500, log_every=5, **_NICE_ADAM),
    # Multi-scale RealNVP (Dinh et al. 2017, section 3.6) with residual s/t nets of 64 features
    # (the paper's CIFAR-10 size; the paper has no MNIST experiment), Adam lr 1e-3, batch 64.
    # fp32: under bf16 autocast its validation bits/dim were 0.12 worse after 300 steps
    # (benchmarks/results/precision_check.md), far more than NICE's 0.002.
    ("realnvp", "paper"): dict(epochs=100, batch_size=64, lr=1e-3, weight_decay=5e-5, clip_grad=100.0, precision="fp32",
                               model_kwargs=dict(hidden_channels=64, num_blocks=8),
                               checkpoint_minutes=10.0, log_every=100, eval_batch_size=500),
    # About 26 minutes on 2 cores, lr on a cosine to 0: 1.538 test bits/dim (results/realnvp-mnist-cpu.json);
    # the same run at a constant lr 1e-3 ended at 1.563 (results/realnvp-mnist-cpu-constant.json).
    ("realnvp", "cpu"): dict(epochs=4, batch_size=64, lr=1e-3, weight_decay=5e-5, clip_grad=100.0, precision="fp32",
                             schedule="cosine",
                             model_kwargs=dict(hidden_channels=32, num_blocks=2), eval_batch_size=500),
    # Glow (Kingma & Dhariwal 2018, section 3): 2 scales (28x28 squeezes to 14x14, then 7x7) of
    # ActNorm, 1x1 convolution and affine coupling steps. The paper has no MNIST model; "paper" uses its
    # CIFAR-10 depth and width (32 steps per scale, 512 hidden channels) with Adam lr 1e-3, for a GPU.
    ("glow", "paper"): dict(epochs=100, batch_size=64, lr=1e-3, clip_grad=100.0, precision="fp32",
                            model_kwargs=dict(steps_per_scale=32, hidden_channels=512),
                            checkpoint_minutes=10.0, log_every=100, eval_batch_size=500),
    # About 30 minutes on 2 cores, as the RealNVP cpu preset: 8 steps per scale, 96 hidden channels (276k
    # parameters, 376 training images/s against RealNVP cpu's 150), 10 epochs, lr on a cosine to 0:
    # 1.470 test bits/dim in 28.3 min (results/glow-mnist-cpu.json), against RealNVP cpu's 1.538 in 26.5.
    ("glow", "cpu"): dict(epochs=10, batch_size=64, lr=1e-3, clip_grad=100.0, precision="fp32", schedule="cosine",
                          model_kwargs=dict(steps_per_scale=8, hidden_channels=96), eval_batch_size=500),
    ("glow", "quick"): dict(epochs=2, batch_size=32, lr=1e-3, clip_grad=100.0, precision="fp32",
                            model_kwargs=dict(steps_per_scale=2, hidden_channels=8),
                            train_size=256, eval_size=128, log_every=2, eval_batch_size=128),
    ("realnvp", "quick"): dict(epochs=2, batch_size=32, lr=1e-3, clip_grad=100.0, precision="fp32",
                               model_kwargs=dict(hidden_channels=8, num_blocks=1),
                               train_size=256, eval_size=128, log_every=2, eval_batch_size=128),
    # 2D toy densities (vector models).
    ("nice", "toy"): dict(epochs=20, batch_size=256, lr=1e-3,
                          model_kwargs=dict(num_couplings=6, hidden=64, num_hidden_layers=2)),
    ("realnvp", "toy"): dict(epochs=20, batch_size=256, lr=1e-3, model_kwargs=dict(hidden=64)),
}

#: How a changed field shows in the default run folder's name.
_NAME_FIELDS = {"epochs": "epochs", "batch_size": "batch", "lr": "lr", "betas": "betas", "eps": "eps",
                "weight_decay": "wd", "clip_grad": "clip", "schedule": "", "precision": "", "model_kwargs": "",
                "train_size": "train", "eval_size": "eval", "seed": "seed", "eval_samples": "is"}


def make_config(model: str = "nice", preset: str = "cpu", dataset: str = "mnist", **overrides: Any) -> TrainConfig:
    """A `TrainConfig` from a preset, with any field overridden.

    The default run folder, ``runs/MODEL-DATASET-PRESET``, gets a suffix for
    every field that differs from the preset (``-lr0.003``, ``-seed1``...), so
    two different runs never share a folder by default.
    """
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
        if isinstance(value, dict):
            value = "-".join(f"{k}{v}" for k, v in sorted(value.items()))
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
