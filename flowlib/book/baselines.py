"""Reference scores for the 2D toys: the best single Gaussian and, where it is known, the true density.

A flow's test negative log-likelihood means little on its own. Two numbers
put it in context:

* **The maximum-likelihood Gaussian** (`gaussian_fit`, `gaussian_nll`). Its
  parameters have a closed form, the sample mean and the (biased) sample
  covariance of the training points,

  .. math:: \\hat\\mu = \\frac1N \\sum_n x_n, \\qquad
     \\hat\\Sigma = \\frac1N \\sum_n (x_n - \\hat\\mu)(x_n - \\hat\\mu)^\\top,

  and its negative log-likelihood of a point is
  :math:`\\tfrac12 \\big[D \\log 2\\pi + \\log\\det\\hat\\Sigma + (x - \\hat\\mu)^\\top \\hat\\Sigma^{-1} (x - \\hat\\mu)\\big]`.
  On the training points themselves the quadratic term averages to exactly
  :math:`D`. A flow whose prior is a standard normal can represent this
  Gaussian exactly (a shift, a shear and a diagonal scaling), so a trained
  flow that scores worse than it has not used its capacity.
* **The true density** (`true_log_density`), for the toys whose density has a
  closed form or a one-dimensional integral: ``8gaussians`` (a mixture of
  eight isotropic Gaussians), ``checkerboard`` (uniform, :math:`1/32` on eight
  squares of area 4), ``rings`` (each ring is a uniform angle on a circle of
  radius :math:`r` plus isotropic noise :math:`\\sigma`, whose density is
  :math:`\\frac{1}{2\\pi\\sigma^2} e^{-(\\rho^2 + r^2)/2\\sigma^2} I_0(r\\rho/\\sigma^2)`
  at distance :math:`\\rho` from the centre, with :math:`I_0` the modified
  Bessel function of order 0) and ``two_moons`` (a uniform point on a half
  circle plus Gaussian noise: the average of a Gaussian density over the arc,
  computed by the midpoint rule). The mean of :math:`-\\log p(x)` over test
  points is a Monte Carlo estimate of the density's entropy :math:`H(p)`,
  the lowest expected negative log-likelihood any model :math:`q` can reach:
  :math:`\\mathbb E_p[-\\log q] = H(p) + D_{\\mathrm{KL}}(p \\| q) \\ge H(p)`.
  ``pinwheel`` and ``2spirals`` have no such formula here.

Reference: C. M. Bishop, *Pattern Recognition and Machine Learning*,
Springer 2006, section 2.3.4 (maximum likelihood for the Gaussian, eqs.
2.118-2.122).

The constants of `true_log_density` are those of the samplers in
`flowlib.datasets.toy`; ``tests/test_baselines.py`` checks each density against
samples drawn there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gaussian_fit", "gaussian_nll", "TRUE_DENSITIES", "true_log_density", "true_nll"]

#: The toy densities `true_log_density` knows.
TRUE_DENSITIES: tuple[str, ...] = ("two_moons", "8gaussians", "checkerboard", "rings")

_F64 = torch.float64


def _check_points(x: Tensor, what: str, min_rows: int = 1) -> None:
    if x.dim() != 2 or x.shape[0] < min_rows:
        raise ValueError(f"{what} must have shape (N, D) with N >= {min_rows}, got {tuple(x.shape)}")


def gaussian_fit(train: Tensor) -> tuple[Tensor, Tensor]:
    """The maximum-likelihood Gaussian of ``train`` (N, D): sample mean and biased covariance, in float64.

    >>> mean, cov = gaussian_fit(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]))
    >>> mean.tolist(), cov.tolist()
    ([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])
    """
    _check_points(train, "train", min_rows=2)
    x = train.to(_F64)
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / x.shape[0]


def gaussian_nll(train: Tensor, test: Tensor) -> float:
    """Mean negative log-likelihood (nats per point) of ``test`` under the ML Gaussian of ``train``.

    On the training points themselves it is :math:`\\tfrac12 (D \\log 2\\pi + \\log\\det\\hat\\Sigma + D)`:

    >>> x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> _, cov = gaussian_fit(x)
    >>> closed_form = 0.5 * (2 * math.log(2 * math.pi) + torch.logdet(cov).item() + 2)
    >>> abs(gaussian_nll(x, x) - closed_form) < 1e-12
    True
    """
    _check_points(test, "test")
    mean, cov = gaussian_fit(train)
    if test.shape[1] != mean.shape[0]:
        raise ValueError(f"test has {test.shape[1]} dimensions, train has {mean.shape[0]}")
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, (test.to(_F64) - mean).T, upper=False)   # L^{-1} (x - mu)
    d = mean.shape[0]
    log_det = 2 * chol.diagonal().log().sum()
    return float(0.5 * (d * math.log(2 * math.pi) + log_det + white.pow(2).sum(0).mean()))


def _normal2_log_density(x: Tensor, centres: Tensor, std: float) -> Tensor:
    """``log N(x; c_k, std^2 I)`` in 2D, shape ``(N, K)``."""
    sq = (x[:, None, :] - centres[None]).pow(2).sum(-1)
    return -sq / (2 * std * std) - math.log(2 * math.pi * std * std)


def _mixture(log_components: Tensor) -> Tensor:
    """Log-density of the equal-weight mixture of the columns."""
    return torch.logsumexp(log_components, dim=1) - math.log(log_components.shape[1])


def _eight_gaussians(x: Tensor) -> Tensor:
    angle = torch.arange(8, dtype=_F64) * (math.pi / 4)
    centres = 4.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) / 1.414
    return _mixture(_normal2_log_density(x, centres, 0.5 / 1.414))


def _checkerboard(x: Tensor) -> Tensor:
    inside = ((x >= -4.0) & (x < 4.0)).all(dim=1)                     # the board is [-4, 4)^2
    dark = torch.remainder(torch.floor(x[:, 0] / 2) - torch.floor(x[:, 1] / 2), 2) == 0
    out = torch.full((x.shape[0],), -math.inf, dtype=_F64)
    out[inside & dark] = -math.log(32.0)
    return out


def _rings(x: Tensor) -> Tensor:
    std = 0.08
    radii = 0.75 * torch.arange(1, 5, dtype=_F64)
    rho = x.norm(dim=1, keepdim=True)
    # I0(z) = i0e(z) e^z, so exp(-(rho^2 + r^2) / 2s^2) I0(r rho / s^2) = exp(-(rho - r)^2 / 2s^2) i0e(r rho / s^2)
    log_ring = (-(rho - radii).pow(2) / (2 * std * std) + torch.special.i0e(radii * rho / std ** 2).log()
                - math.log(2 * math.pi * std * std))
    return _mixture(log_ring)


def _two_moons(x: Tensor, nodes: int = 1000) -> Tensor:
    t = (torch.arange(nodes, dtype=_F64) + 0.5) * (math.pi / nodes)   # midpoint rule on [0, pi]
    shift = torch.tensor([-1.0, -0.2], dtype=_F64)
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    centres = 2.0 * torch.cat([upper, lower]) + shift                  # noise 0.1 before the scaling by 2
    out = torch.empty(x.shape[0], dtype=_F64)
    for start in range(0, x.shape[0], 500):                            # (500, 2 * nodes) at a time
        out[start:start + 500] = _mixture(_normal2_log_density(x[start:start + 500], centres, 0.2))
    return out


_DENSITIES = {"two_moons": _two_moons, "8gaussians": _eight_gaussians, "checkerboard": _checkerboard,
              "rings": _rings}


def true_log_density(name: str, x: Tensor) -> Tensor:
    """:math:`\\log p(x)` of the toy density ``name`` (one of `TRUE_DENSITIES`) at the points ``x`` (N, 2), float64.

    >>> p = true_log_density("checkerboard", torch.tensor([[1.0, 1.0], [1.0, 3.0]])).exp()
    >>> p.tolist() == [1 / 32, 0.0]
    True
    >>> true_log_density("pinwheel", torch.zeros(1, 2))
    Traceback (most recent call last):
    ...
    ValueError: no true density for 'pinwheel'; known: 'two_moons', '8gaussians', 'checkerboard', 'rings'
    """
    if name not in _DENSITIES:
        known = ", ".join(repr(k) for k in TRUE_DENSITIES)
        raise ValueError(f"no true density for {name!r}; known: {known}")
    _check_points(x, "x")
    if x.shape[1] != 2:
        raise ValueError(f"the toy densities are 2D, got points of shape {tuple(x.shape)}")
    return _DENSITIES[name](x.to(_F64))


def true_nll(name: str, test: Tensor) -> float:
    """Mean of :math:`-\\log p(x)` over ``test``: a Monte Carlo estimate of the entropy of ``name`` in nats.

    >>> round(true_nll("checkerboard", torch.tensor([[1.0, 1.0], [-3.0, -3.0]])), 4) == round(math.log(32), 4)
    True
    """
    return float(-true_log_density(name, test).mean())
