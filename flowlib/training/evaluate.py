"""One evaluation for every flow in the book: the mean negative log-likelihood of a data set.

`log_likelihood_sum` adds :math:`\\log p(x_n)` over a data set in float64,
in eval mode, with dequantization noise from a fixed seed (so a model's score
is reproducible and never moves a training run's random state), optionally
importance-weighted over :math:`K` noise draws; `evaluate` turns it into nats
per example and bits per dimension. The trainer, `rescore`, `fit` and the
chapters all score models with it.

>>> from flowlib.flow_model import FlowModel
>>> from flowlib.scaling import DiagonalScaling
>>> evaluate(FlowModel(DiagonalScaling(1), "normal", (1,)), torch.zeros(4, 1)).count
4
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..metrics import bits_per_dim
from .precision import autocast, model_device, to_device

__all__ = ["EVAL_SEED", "Evaluation", "log_likelihood_sum", "evaluate"]

#: Seed of the dequantization noise during evaluation (fixed, so a model's score is reproducible
#: and evaluating never moves the training run's random state).
EVAL_SEED = 1234


@dataclass(frozen=True)
class Evaluation:
    """Mean negative log-likelihood of ``count`` examples, in nats per example and bits per dimension."""

    nats: float
    bpd: float
    count: int


@contextmanager
def _evaluation_noise(device: torch.device, seed: int) -> Iterator[None]:
    """Fixed dequantization noise during evaluation; the caller's random state is restored after."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _check_samples(samples: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")


@torch.no_grad()
def log_likelihood_sum(
    model: nn.Module, data: Tensor, batch_size: int = 1000, precision: str = "fp32", seed: int = EVAL_SEED,
    samples: int = 1,
) -> Tensor:
    """:math:`\\sum_n \\log p(x_n)` over ``data`` in nats, as a float64 scalar on the model's device.

    Runs in eval mode, in batches moved to the model's device, with the
    dequantization noise drawn from a fixed seed (so the same model always
    gets the same score) and the caller's random state left untouched. The
    trainer sums shards with it across processes.

    With ``samples`` :math:`= K > 1` each example's score is the log-mean-exp
    of :math:`K` calls of ``model.log_prob`` (each with fresh dequantization
    noise :math:`u_k`, all under the fixed seed),

    .. math:: \\log \\hat p_K(x) = \\log \\frac1K \\sum_{k=1}^{K} e^{\\ell_k},
       \\qquad \\ell_k = \\log p_{\\text{model}}(x + u_k) - \\log q(u_k \\mid x),

    computed as ``logsumexp - log K`` in float64. When ``log_prob`` is a
    dequantization bound (uniform :math:`q \\equiv 1` or variational), the
    :math:`e^{\\ell_k}` are importance weights with mean :math:`P(x)`, so
    :math:`\\mathbb E[\\log \\hat p_K(x)] \\le \\log P(x)` for every :math:`K`,
    the expectation never decreases with :math:`K`, and it tends to
    :math:`\\log P(x)` when the weights are bounded: the importance-weighted
    bound (Burda et al. 2016, Theorem 1), here with the dequantization noise
    as the latent variable (Ho et al. 2019, section 3.1). ``samples=1`` is the plain
    bound, the same numbers as before this option existed. A model without
    noise gives :math:`K` equal terms and its exact log-likelihood for any :math:`K`.

    Reference: Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted
    Autoencoders", ICLR 2016, arXiv:1509.00519 (https://arxiv.org/abs/1509.00519).

    Reference: J. Ho, X. Chen, A. Srinivas, Y. Duan, P. Abbeel, "Flow++:
    Improving Flow-Based Generative Models with Variational Dequantization
    and Architecture Design", ICML 2019, arXiv:1902.00275
    (https://arxiv.org/abs/1902.00275).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _check_samples(samples)
    device = model_device(model)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with _evaluation_noise(device, seed):
            for start in range(0, data.shape[0], batch_size):
                x = to_device(data[start:start + batch_size], device)
                if samples == 1:
                    with autocast(precision, device):
                        total += model.log_prob(x).double().sum()
                    continue
                terms = []
                for _ in range(samples):
                    with autocast(precision, device):
                        terms.append(model.log_prob(x).double())
                total += (torch.logsumexp(torch.stack(terms), dim=0) - math.log(samples)).sum()
    finally:
        model.train(was_training)
    return total


def evaluate(
    model: nn.Module, data: Tensor, batch_size: int = 1000, precision: str = "fp32", samples: int = 1,
) -> Evaluation:
    """Mean negative log-likelihood of ``model`` on ``data``: nats per example and bits per dimension.

    ``samples`` :math:`= K > 1` scores each example by the importance-weighted
    bound :math:`\\log \\frac1K \\sum_k e^{\\ell_k}` of `log_likelihood_sum`
    (tighter than the plain dequantization bound, :math:`K` times the work).

    >>> from flowlib.flow_model import FlowModel
    >>> from flowlib.scaling import DiagonalScaling
    >>> e = evaluate(FlowModel(DiagonalScaling(1), "normal", (1,)), torch.zeros(10, 1))
    >>> round(e.nats, 4), round(e.nats, 4) == round(0.5 * math.log(2 * math.pi), 4), e.count
    (0.9189, True, 10)
    """
    if data.dim() < 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape (N, ...) with N >= 1, got {tuple(data.shape)}")
    nats = -log_likelihood_sum(model, data, batch_size, precision, samples=samples).item() / data.shape[0]
    return Evaluation(nats=nats, bpd=float(bits_per_dim(-nats, model.num_dims)), count=data.shape[0])
