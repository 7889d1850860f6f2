"""One training step and one fit loop: maximum likelihood for every flow in the book.

A flow model is fitted by minimising the negative log-likelihood of a batch,

.. math:: \\mathcal L(\\theta) = -\\frac1B \\sum_{b=1}^{B}
   \\Big[\\log p_Z(f_\\theta(x_b)) + \\log\\Big|\\det \\frac{\\partial f_\\theta}{\\partial x}(x_b)\\Big|\\Big],

in nats per example (``unit="nats"``, the 2D toys) or divided by
:math:`D \\ln 2` in bits per dimension (``unit="bpd"``, images; see
`flowlib.metrics`). Everything that trains in the book goes through
`train_step`: `fit` (chapters, playground), the command-line trainer
`flowlib.training.train` and the benchmarks.

Precision (``precision``) is `flowlib.training.precision`'s; evaluation is
`flowlib.training.evaluate`'s.

>>> from flowlib.models import realnvp
>>> model = realnvp(2, num_couplings=2, hidden=8)
>>> result = fit(model, torch.randn(256, 2), steps=20, batch_size=64, unit="nats")
>>> len(result.train_loss), result.steps
(20, 20)
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from numbers import Integral, Real

import torch
from torch import Tensor, nn

from ..flow import check_int, check_positive, initialize_from_data, value_checks
from ..metrics import bits_per_dim
from .evaluate import Evaluation, evaluate
from .precision import PRECISIONS, autocast, model_device, to_device
from .rmsprop_momentum import RMSPropMomentum

__all__ = ["SCHEDULES", "EXPONENTIAL_DECAY", "EXPONENTIAL_FLOOR_STEP", "OPTIMIZERS", "UNITS", "SEED_LIMIT", "batches",
           "loss_scale", "check_adam", "check_optimizer", "check_clip_grad", "check_seed", "make_optimizer",
           "learning_rate", "negative_log_likelihood", "compiled_loss", "train_step", "FitResult", "fit"]

SCHEDULES = ("constant", "cosine", "exponential")

#: The ``"exponential"`` schedule: the rate is divided by this after every update, down to a tenth of its start
#: (NICE's released code: 1e-3 to 1e-4, `flowlib.training.rmsprop_momentum`).
EXPONENTIAL_DECAY = 1.0005
#: The first step at the floor: :math:`\lceil \ln 10 / \ln 1.0005 \rceil`.
EXPONENTIAL_FLOOR_STEP = math.ceil(math.log(10) / math.log(EXPONENTIAL_DECAY))

#: The optimizers `make_optimizer` builds.
OPTIMIZERS = ("adam", "rmsprop_momentum")
UNITS = ("bpd", "nats")



#: Seeds are integers in ``[0, SEED_LIMIT)`` (torch takes at most 64 bits; one bit is kept for offsets).
SEED_LIMIT = 2**63


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_clip_grad(clip_grad: float | None) -> None:
    """``None`` (no clipping) or a positive finite number, the largest gradient norm.

    A negative bound would make `torch.nn.utils.clip_grad_norm_` scale the
    gradients by a negative factor (the steps climb the loss), and 0 or NaN
    would turn clipping off without a word.

    >>> check_clip_grad(-1.0)
    Traceback (most recent call last):
    ...
    ValueError: clip_grad must be a positive finite number or None, got -1.0
    """
    if clip_grad is not None and (isinstance(clip_grad, bool) or not isinstance(clip_grad, Real)
                                  or not (math.isfinite(clip_grad) and clip_grad > 0)):
        raise ValueError(f"clip_grad must be a positive finite number or None, got {clip_grad!r}")


def check_adam(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """Adam's settings: ``lr`` and ``eps`` positive and finite, ``betas`` two decay rates in ``[0, 1)``,
    ``weight_decay`` finite and ``>= 0``.

    >>> check_adam(1e-3, (0.9,), 1e-8, 0.0)
    Traceback (most recent call last):
    ...
    ValueError: betas must be in [0, 1), two decay rates (beta1, beta2); got (0.9,)
    """
    check_positive("lr", lr)
    pair = isinstance(betas, (tuple, list)) and len(betas) == 2
    if not pair or not all(isinstance(b, Real) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be in [0, 1), two decay rates (beta1, beta2); got {betas!r}")
    check_positive("eps", eps)
    if (isinstance(weight_decay, bool) or not isinstance(weight_decay, Real)
            or not (math.isfinite(weight_decay) and weight_decay >= 0)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")


def check_optimizer(optimizer: str, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """The optimizer's name and settings: one of `OPTIMIZERS`, Adam's settings (`check_adam`; RMSProp uses
    ``lr`` from them), and no weight decay for ``"rmsprop_momentum"``, since NICE's released recipe has none.

    >>> check_optimizer("rmsprop_momentum", 1e-3, (0.9, 0.999), 1e-8, 1e-4)
    Traceback (most recent call last):
    ...
    ValueError: weight_decay must be 0 with optimizer 'rmsprop_momentum' (NICE's released recipe has none), got 0.0001
    """
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    check_adam(lr, betas, eps, weight_decay)
    if optimizer == "rmsprop_momentum" and weight_decay:
        raise ValueError(f"weight_decay must be 0 with optimizer 'rmsprop_momentum' (NICE's released recipe "
                         f"has none), got {weight_decay!r}")


def check_seed(seed: int) -> None:
    """An integer in ``[0, SEED_LIMIT)`` (``2**63``).

    >>> check_seed(2**70)
    Traceback (most recent call last):
    ...
    ValueError: seed must be an integer in [0, 2**63), got 1180591620717411303424
    """
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def loss_scale(model: nn.Module, unit: str) -> float:
    """The factor from nats per example to ``unit``: 1 for nats, :math:`1 / (D \\ln 2)` for bits/dim.

    >>> from flowlib.models import realnvp
    >>> round(loss_scale(realnvp(2), "bpd") * 2 * math.log(2), 12)
    1.0
    """
    _check_choice("unit", unit, UNITS)
    return 1.0 if unit == "nats" else float(bits_per_dim(-1.0, model.num_dims))


def make_optimizer(
    model: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
    weight_decay: float = 0.0, optimizer: str = "adam", loss_factor: float = 1.0,
) -> torch.optim.Optimizer:
    """Adam (``optimizer="adam"``), as a fused kernel (one pass over memory per step instead of several; same
    arithmetic), or NICE's released `~flowlib.training.rmsprop_momentum.RMSPropMomentum` (``"rmsprop_momentum"``,
    which takes neither ``betas`` nor ``eps`` nor weight decay). ``loss_factor`` is the factor the loss is
    multiplied by from nats per example (`loss_scale`: :math:`1 / (D \\ln 2)` for bits/dim): RMSProp's steps do
    not depend on the loss's unit except through its floor, which the released code sets to :math:`10^{-2}` on
    gradients of nats per example, so the floor is multiplied by it too.

    ``betas`` are today's decay rates (PyTorch, and Adam's final version). The
    first arXiv versions of Adam wrote :math:`\\beta` for one minus the decay,
    so NICE's "β2 = 0.01" means ``betas[1] = 0.99`` here. The settings are checked
    (`check_optimizer`) before the optimizer is built.

    >>> make_optimizer(nn.Linear(2, 2), optimizer="rmsprop_momentum", weight_decay=1e-4)
    Traceback (most recent call last):
    ...
    ValueError: weight_decay must be 0 with optimizer 'rmsprop_momentum' (NICE's released recipe has none), got 0.0001
    """
    check_optimizer(optimizer, lr, betas, eps, weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "rmsprop_momentum":
        check_positive("loss_factor", loss_factor)
        return RMSPropMomentum(params, lr=lr, stabilizer=1e-2 * loss_factor)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                            fused=fused or None)


def learning_rate(schedule: str, lr: float, step: int, total_steps: int, min_lr: float = 0.0,
                  warmup_steps: int = 0) -> float:
    """The learning rate of step ``step`` (0-based) out of ``total_steps``: constant, cosine, or exponential.

    ``"cosine"`` goes from :math:`\\eta` to ``min_lr`` :math:`= \\eta_{\\min}` (0 unless set) over the run,
    :math:`\\eta_{\\min} + \\tfrac12(\\eta - \\eta_{\\min})(1 + \\cos(\\pi t / T))` (Loshchilov & Hutter 2017,
    "SGDR: Stochastic gradient descent with warm restarts", ICLR: its cosine annealing, without the restarts).

    ``"exponential"`` is NICE's released schedule: :math:`\\max(\\eta / 1.0005^{t}, \\eta / 10)` at step
    :math:`t` (`EXPONENTIAL_DECAY`; the floor from step
    :math:`\\lceil \\ln 10 / \\ln 1.0005 \\rceil = 4607` on, `EXPONENTIAL_FLOOR_STEP`). A pure function of
    the step, so a resumed run follows the same schedule.

    ``warmup_steps`` :math:`= W > 0` multiplies any of them by :math:`\\min(1, (t + 1)/W)`: a linear warm-up
    from :math:`\\eta/W` at the first step to the schedule's own rate from step :math:`W - 1` on (Glow's
    released code, openai/glow ``train.py``, warms its rate up linearly from 0 over its first epochs).

    >>> learning_rate("constant", 1.0, 0, 10, warmup_steps=4), learning_rate("constant", 1.0, 3, 10, warmup_steps=4)
    (0.25, 1.0)
    >>> learning_rate("cosine", 1.0, 0, 10), learning_rate("cosine", 1.0, 5, 10), learning_rate("constant", 0.1, 7, 10)
    (1.0, 0.5, 0.1)
    >>> learning_rate("exponential", 1e-3, 0, 10), learning_rate("exponential", 1e-3, 10**6, 10)
    (0.001, 0.0001)
    >>> learning_rate("cosine", 1.0, 5, 10, min_lr=0.5), learning_rate("cosine", 1.0, 10, 10, min_lr=0.5)
    (0.75, 0.5)
    """
    _check_choice("schedule", schedule, SCHEDULES)
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return lr * warmup
    if schedule == "exponential":
        return max(lr / EXPONENTIAL_DECAY ** min(step, EXPONENTIAL_FLOOR_STEP), lr / 10) * warmup
    cosine = min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return cosine * warmup


def negative_log_likelihood(model: nn.Module, x: Tensor, scale: float, precision: str = "fp32",
                            net: nn.Module | None = None) -> Tensor:
    """The mean loss of the batch ``x``: :math:`-\\frac1B \\sum_b \\log p(x_b)` times ``scale`` (`loss_scale`).

    The nets run under ``precision``'s autocast for the model's device type; the prior, the log-dets and the
    mean stay in float32 (or the model's dtype). ``net`` as in `train_step`.
    """
    with autocast(precision, model_device(model)):
        if net is None:
            log_p = model.log_prob(x)
        else:
            z, log_det = net(x)
            log_p = model.prior.log_prob(z.float()) + log_det.float()
    return -log_p.float().mean() * scale


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, Callable[..., Tensor]]" = weakref.WeakKeyDictionary()


def compiled_loss(model: nn.Module) -> Callable[..., Tensor]:
    """`negative_log_likelihood` compiled by ``torch.compile`` (inductor) for ``model``, made once per model.

    The first call compiles (tens of seconds on a small CPU); later calls with the same shapes reuse the code.
    Compilation fuses element-wise operations, so the loss can differ from eager by rounding only.
    """
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(negative_log_likelihood)
    return _COMPILED[model]


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, *, clip_grad: float | None = None,
    unit: str = "bpd", precision: str = "fp32", net: nn.Module | None = None, compile: bool = False,
) -> Tensor:
    """One gradient step on the batch ``x``; returns the detached mean loss (no host sync).

    ``net`` is what the forward pass runs through when it is not ``model``
    itself (a `DistributedDataParallel` wrapper, whose ``forward`` returns
    ``(z, log_det)``). ``clip_grad`` is ``None`` (no clipping) or the largest
    gradient norm, a positive finite number (`check_clip_grad`). With
    ``compile=True`` the loss and its backward run through `compiled_loss`.
    """
    check_clip_grad(clip_grad)
    scale = loss_scale(model, unit)
    loss_fn = compiled_loss(model) if compile else negative_log_likelihood
    loss = loss_fn(model, x, scale, precision, net)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    return loss.detach()


@dataclass
class FitResult:
    """What `fit` returns: the loss of every step, the validation curve, the test loss, the time."""

    train_loss: list[float] = field(default_factory=list)
    valid_steps: list[int] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    test_loss: float | None = None
    seconds: float = 0.0
    steps: int = 0
    unit: str = "bpd"


def batches(x: Tensor, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[Tensor]:
    """Yield mini-batches of ``x`` along its first dimension (one epoch).

    With ``shuffle=True`` the order is a ``torch.randperm`` drawn from
    ``generator`` (the global RNG when ``None``), so a seeded generator gives
    the same batches every time, and successive epochs with the same
    generator object differ. Every index appears exactly once per epoch
    (minus the short last batch when ``drop_last=True``). Indexing happens on
    ``x``'s device; the permutation is drawn on the CPU.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> [b.tolist() for b in batches(torch.arange(5), 2, shuffle=False, drop_last=True)]
        [[0, 1], [2, 3]]
        >>> sum(len(b) for b in batches(torch.arange(10), 3, generator=g))
        10
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    spans = (slice(start, min(start + batch_size, stop)) for start in range(0, stop, batch_size))
    return (x[s] if order is None else x[order[s]] for s in spans)


def _batches_forever(data: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    while True:
        yield from batches(data, batch_size, generator=generator, drop_last=True)


def fit(
    model: nn.Module, train: Tensor, *, steps: int, batch_size: int = 64, lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
    clip_grad: float | None = 100.0, schedule: str = "constant", unit: str = "bpd",
    valid: Tensor | None = None, test: Tensor | None = None, eval_every: int | None = None, seed: int = 0,
    precision: str = "fp32", callback: Callable[[int, float], None] | None = None, callback_every: int = 50,
) -> FitResult:
    """Train ``model`` by maximum likelihood with Adam for ``steps`` mini-batches.

    Batches come from `batches` (reshuffled every epoch by a
    generator seeded with ``seed``) and move to the model's device
    (`~flowlib.training.precision.to_device`: through pinned memory and
    without a host sync on CUDA), so the data may stay on the CPU. Before
    the first step, layers that start from the data do so
    (`~flowlib.flow.initialize_from_data`); value checks run on the first
    batch only. ``valid`` is evaluated every ``eval_every``
    steps (default: 5 times in all) and ``test`` once at the end, both with
    `evaluate`. ``callback(step, mean loss since the last call)`` runs every
    ``callback_every`` steps and after the last (progress bars, widgets).
    Every setting is checked before the first step.
    """
    _check_fit_settings(train, steps, batch_size, eval_every, callback_every, seed, clip_grad, schedule,
                        precision, unit)  # Adam's settings: make_optimizer, below, before any step
    device = model_device(model)
    optimizer = make_optimizer(model, lr, betas, eps, weight_decay)
    every = eval_every or max(1, steps // 5)
    generator = torch.Generator().manual_seed(seed)
    source = _batches_forever(train, batch_size, generator)
    result = FitResult(unit=unit)
    losses: list[Tensor] = []
    reported = 0
    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        x = to_device(next(source), device)
        if step == 1:
            initialize_from_data(model, x)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(schedule, lr, step - 1, steps)
        with value_checks(step == 1):
            losses.append(train_step(model, optimizer, x, clip_grad=clip_grad, unit=unit, precision=precision))
        if callback is not None and (step % callback_every == 0 or step == steps):
            callback(step, torch.stack(losses[reported:]).mean().item())
            reported = step
        if valid is not None and (step % every == 0 or step == steps):
            result.valid_steps.append(step)
            result.valid_loss.append(_in_unit(evaluate(model, valid, precision=precision), unit))
            model.train()
    result.train_loss = torch.stack(losses).tolist()
    if test is not None:
        result.test_loss = _in_unit(evaluate(model, test, precision=precision), unit)
    model.eval()
    result.seconds = time.perf_counter() - start
    result.steps = steps
    return result


def _check_fit_settings(train: Tensor, steps: int, batch_size: int, eval_every: int | None, callback_every: int,
                        seed: int, clip_grad: float | None, schedule: str, precision: str, unit: str) -> None:
    """`fit`'s settings, each a `ValueError` naming it when it is not allowed."""
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    if eval_every is not None:
        check_int("eval_every", eval_every)
    check_int("callback_every", callback_every)
    check_seed(seed)
    check_clip_grad(clip_grad)
    _check_choice("schedule", schedule, SCHEDULES)
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("unit", unit, UNITS)
    if train.dim() < 2 or train.shape[0] < batch_size:
        raise ValueError(f"train must have shape (N, ...) with N >= batch_size = {batch_size}, "
                         f"got {tuple(train.shape)}")


def _in_unit(e: Evaluation, unit: str) -> float:
    return e.bpd if unit == "bpd" else e.nats
