"""Diagnostics of a trained flow: is its latent distributed as the prior, how it ranks inputs, what temperature does.

* **Latent statistics.** If a model were exact, :math:`p_X = p_{data}`, the
  codes :math:`z = f(x)` of data would be distributed exactly as the prior.
  `latent_moments` gives the per-dimension mean, standard deviation,
  skewness :math:`\\mathbb E[(z-\\mu)^3]/\\sigma^3` and excess kurtosis
  :math:`\\mathbb E[(z-\\mu)^4]/\\sigma^4 - 3`; the priors' closed forms are
  :math:`(0, 1, 0, 0)` for the standard normal and
  :math:`(0, \\pi/\\sqrt 3, 0, 6/5)` for the standard logistic.
  `prior_quantile` is the prior's quantile function,
  :math:`\\Phi^{-1}(p) = \\sqrt 2\\,\\mathrm{erf}^{-1}(2p - 1)` and
  :math:`\\log p - \\log(1 - p)`, and `qq_points` pairs it with the empirical
  quantiles of a sample at the plotting positions :math:`p_i = (i - 1/2)/n`
  (a QQ plot: a sample from the prior lies on the diagonal).
* **Temperature.** Sampling at temperature :math:`T` draws
  :math:`x = f^{-1}(T u)`, :math:`u \\sim p_Z`. By the change of variables the
  density of :math:`x` is

  .. math:: q_T(x) = T^{-D}\\, p_Z\\big(f(x)/T\\big)\\,
            \\Big|\\det \\frac{\\partial f}{\\partial x}\\Big|,

  which `tempered_log_prob` evaluates (:math:`T = 1` gives the model's own
  :math:`\\log p_X`). For a standard normal prior
  :math:`T^{-D} p_Z(z/T) \\propto p_Z(z)^{1/T^2}`, so
  :math:`q_T \\propto p_X^{1/T^2}\\,|\\det \\partial f/\\partial x|^{1 - 1/T^2}`:
  a power of :math:`p_X` only when the log-determinant does not depend on
  :math:`x` (a volume-preserving flow up to a constant); for other priors
  (the logistic) not even then.
* **Dead units.** A ReLU unit of a coupling net is *dead* on a set of inputs
  when its pre-activation is negative for every one of them: it is 0 for all of
  them, adds nothing to the coupling's output, and gets no gradient from them,
  so training does not bring it back. `dead_unit_fractions` gives, for each
  hidden layer of the coupling nets (`~flowlib.nets.MLP`), the fraction of its
  units that are dead on ``x``, averaged over the couplings.
* **Ranking inputs.** `auroc` is the Mann-Whitney probability
  :math:`P(s_{out} > s_{in}) + \\tfrac12 P(s_{out} = s_{in})` that a score (here
  bits/dim) puts a random example of one set above a random example of
  another: 1 separates them perfectly, 0.5 not at all, 0 perfectly the
  wrong way round. It is the area under the ROC curve of the score.

Reference: E. Nalisnick, A. Matsukawa, Y. W. Teh, D. Gorur,
B. Lakshminarayanan, "Do Deep Generative Models Know What They Don't Know?",
ICLR 2019, arXiv:1810.09136 (https://arxiv.org/abs/1810.09136): flows,
VAEs and PixelCNNs can give out-of-distribution data a higher likelihood
than their own test data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..distributions import Prior, StandardLogistic, StandardNormal

__all__ = ["auroc", "dead_unit_fractions", "encode", "latent_moments", "prior_quantile", "qq_points",
           "tempered_log_prob"]


@torch.no_grad()
def encode(model: nn.Module, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """``(z, log_det)`` of ``model(x)`` in batches, without gradients, on the CPU.

    ``z`` is flattened to ``(N, D)``. A model that starts with
    `~flowlib.dequantization.Dequantize` draws fresh noise: seed first for
    reproducible numbers. ``log p_X = prior.log_prob(z) + log_det``.

    >>> from flowlib.models import realnvp
    >>> z, log_det = encode(realnvp(2, 2, 8), torch.randn(5, 2), batch_size=2)
    >>> z.shape, log_det.shape
    (torch.Size([5, 2]), torch.Size([5]))
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    zs, dets = [], []
    for chunk in x.split(batch_size):
        z, log_det = model(chunk.to(device))
        zs.append(z.flatten(1).cpu())
        dets.append(log_det.cpu())
    return torch.cat(zs), torch.cat(dets)


@torch.no_grad()
def dead_unit_fractions(model: nn.Module, x: Tensor) -> list[float]:
    """Per hidden layer of the coupling nets, the fraction of units off (ReLU output 0) for every example of ``x``.

    ``model`` is a flow model whose ``flow`` is a sequence of layers; ``x`` passes through them in order (a
    `~flowlib.dequantization.Dequantize` draws its noise), and every coupling whose net is an
    `~flowlib.nets.MLP` reports, for its :math:`k`-th ReLU, the fraction of units :math:`j` with
    :math:`h_{kj}(x_b) = 0` for all :math:`b`. The list averages them over the couplings (nets of one depth).
    The model is evaluated in eval mode and every module is left in the mode it was in.

    >>> from flowlib.models import nice
    >>> model = nice(4, num_couplings=1, hidden=8, num_hidden_layers=2)
    >>> with torch.no_grad():
    ...     _ = model.flow[0].net[2].bias.fill_(-100.0)  # the second hidden layer: off for every input
    >>> dead_unit_fractions(model, torch.rand(100, 4))[1]
    1.0
    """
    from ..coupling import Coupling
    from ..nets import MLP

    flow = getattr(model, "flow", None)
    if flow is None:
        raise ValueError(f"dead_unit_fractions needs a flow model (with a .flow of layers), got {type(model).__name__}")
    per_net: list[list[float]] = []
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        h = x.to(next(model.parameters()).device)
        for layer in flow:
            if isinstance(layer, Coupling) and isinstance(layer.net, MLP):
                a, _ = layer.split(h)
                fractions = []
                for module in layer.net:
                    a = module(a)
                    if isinstance(module, nn.ReLU):
                        fractions.append((a <= 0).all(0).float().mean().item())
                per_net.append(fractions)
            h, _ = layer(h)
    finally:
        for module, training in modes.items():
            module.train(training)
    if not per_net:
        raise ValueError("dead_unit_fractions needs a model with coupling layers whose nets are MLPs, found none")
    if len({len(fractions) for fractions in per_net}) > 1:
        raise ValueError(f"dead_unit_fractions averages over nets of one depth, got depths "
                         f"{sorted({len(fractions) for fractions in per_net})}")
    return [sum(fractions[k] for fractions in per_net) / len(per_net) for k in range(len(per_net[0]))]


def latent_moments(z: Tensor) -> dict[str, Tensor]:
    """Per-dimension ``mean``, ``std``, ``skewness`` and ``excess_kurtosis`` of ``(N, D)`` codes.

    Population moments (divided by :math:`N`): with :math:`m_k` the
    :math:`k`-th central moment, skewness is :math:`m_3 / m_2^{3/2}` and
    excess kurtosis :math:`m_4 / m_2^2 - 3`.

    >>> m = latent_moments(torch.tensor([[-1.0, 0.0], [1.0, 0.0], [-1.0, 2.0], [1.0, 2.0]]))
    >>> m["mean"].tolist(), m["std"].tolist(), m["excess_kurtosis"].tolist()
    ([0.0, 1.0], [1.0, 1.0], [-2.0, -2.0])
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"latent_moments expects (N, D) codes with N >= 2, got shape {tuple(z.shape)}")
    z = z.double()
    mean = z.mean(0)
    c = z - mean
    m2 = (c ** 2).mean(0)
    return {
        "mean": mean,
        "std": m2.sqrt(),
        "skewness": (c ** 3).mean(0) / m2 ** 1.5,
        "excess_kurtosis": (c ** 4).mean(0) / m2 ** 2 - 3,
    }


def prior_quantile(prior: Prior, p: Tensor) -> Tensor:
    """The quantile function (inverse CDF) of a standard normal or standard logistic prior.

    Normal: :math:`\\sqrt 2\\,\\mathrm{erf}^{-1}(2p - 1)`; logistic: :math:`\\log p - \\log(1 - p)`.

    >>> p = torch.tensor([0.5, 0.975], dtype=torch.float64)
    >>> [round(v, 4) for v in prior_quantile(StandardNormal(), p).tolist()]
    [0.0, 1.96]
    >>> [round(v, 4) for v in prior_quantile(StandardLogistic(), p).tolist()]
    [0.0, 3.6636]
    """
    if not bool(((p > 0) & (p < 1)).all()):
        raise ValueError("probabilities must lie strictly between 0 and 1")
    if isinstance(prior, StandardNormal):
        return math.sqrt(2) * torch.erfinv(2 * p - 1)
    if isinstance(prior, StandardLogistic):
        return torch.log(p) - torch.log1p(-p)
    raise ValueError(f"no quantile function for a {type(prior).__name__} prior")


def qq_points(values: Tensor, prior: Prior, num: int = 200) -> tuple[Tensor, Tensor]:
    """``(prior quantiles, sample quantiles)`` at :math:`p_i = (i - 1/2)/n`, ``i = 1..num`` (a QQ plot).

    All entries of ``values`` are pooled. Sample quantiles interpolate
    linearly between order statistics (``torch.quantile``).

    >>> q_prior, q_sample = qq_points(torch.randn(20000, dtype=torch.float64), StandardNormal(), num=5)
    >>> bool(((q_prior - q_sample).abs() < 0.05).all())
    True
    """
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    flat = values.detach().flatten().double().cpu()
    probs = (torch.arange(num, dtype=torch.float64) + 0.5) / num
    if flat.numel() > 2 ** 24 - 1:  # torch.quantile's limit: subsample evenly
        flat = flat[torch.linspace(0, flat.numel() - 1, 2 ** 24 - 1).long()]
    return prior_quantile(prior, probs), torch.quantile(flat, probs)


def tempered_log_prob(prior: Prior, z: Tensor, log_det: Tensor, temperature: float) -> Tensor:
    """:math:`\\log q_T(x) = \\log p_Z(z/T) - D \\log T + \\log|\\det \\partial f/\\partial x|` with ``z = f(x)``.

    The exact log-density of the samples :math:`f^{-1}(T u)`,
    :math:`u \\sim p_Z`, at the point whose code is ``z`` (shape ``(B, D)``)
    and whose log-determinant is ``log_det``. ``temperature=1`` is the
    model's :math:`\\log p_X`. For a model that starts with dequantization it
    is the same kind of bound on the discrete probability as ``log_prob``.

    >>> z, zero = torch.tensor([[1.0]]), torch.zeros(1)
    >>> round(tempered_log_prob(StandardNormal(), z, zero, 0.5).item(), 4)  # log N(1; 0, 0.5^2)
    -2.2258
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    dims = z[0].numel()
    return prior.log_prob(z / temperature) - dims * math.log(temperature) + log_det


def auroc(inside: Tensor, outside: Tensor) -> float:
    """:math:`P(s_{out} > s_{in}) + \\tfrac12 P(s_{out} = s_{in})` over all pairs (Mann-Whitney U / (n_in n_out)).

    With bits/dim as the score: 1 means every ``outside`` example is less
    likely than every ``inside`` one, 0 that every one is more likely.

    >>> auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])), auroc(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0]))
    (1.0, 0.375)
    """
    a = inside.detach().flatten().double().cpu().sort().values
    b = outside.detach().flatten().double().cpu()
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("auroc needs at least one score in each set")
    below = torch.searchsorted(a, b, right=False)  # inside scores strictly below each outside score
    not_above = torch.searchsorted(a, b, right=True)
    u = (below + 0.5 * (not_above - below)).sum().item()
    return u / (a.numel() * b.numel())
