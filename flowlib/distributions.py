"""Base distributions (priors) for the latent space.

Both factorise over dimensions, so ``log_prob`` sums over every non-batch axis
(the factorial prior of NICE, Dinh et al. 2015, section 3.4):

* standard normal: :math:`\\log p(z) = -\\tfrac12 \\sum_d (z_d^2 + \\log 2\\pi)`;
* standard logistic (NICE's prior for MNIST, SVHN and CIFAR-10):
  :math:`\\log p(z) = -\\sum_d \\big(\\mathrm{softplus}(z_d) + \\mathrm{softplus}(-z_d)\\big)`,
  NICE section 3.4's :math:`-\\log(1 + e^{h_d}) - \\log(1 + e^{-h_d})`.

``sample(shape, temperature)`` multiplies a standard draw by ``temperature``,
the "reduced temperature" sampling of Glow (Kingma & Dhariwal 2018, section 6),
which for additive couplings multiplies the standard deviation of
:math:`p(z)` by :math:`T`. For a flow with a constant Jacobian determinant
(additive couplings, NICE's scaling) and a Gaussian prior this samples
exactly :math:`p_T(x) \\propto p(x)^{1/T^2}`, so :math:`T < 1` sharpens the
density (Glow's text writes the exponent as :math:`T^2`). With affine
couplings or the logistic prior it is the same heuristic, not an exact power
of :math:`p`.

Reference: L. Dinh, D. Krueger, Y. Bengio, "NICE: Non-linear Independent
Components Estimation", ICLR 2015 workshop, arXiv:1410.8516
(https://arxiv.org/abs/1410.8516).

Reference: D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with Invertible
1x1 Convolutions", NeurIPS 2018, arXiv:1807.03039
(https://arxiv.org/abs/1807.03039).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Prior", "StandardNormal", "StandardLogistic", "make_prior"]


class Prior(nn.Module):
    """A factorised distribution over ``(B, *event_shape)`` tensors; ``std`` is one dimension's standard deviation."""

    std: float = 1.0

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-density summed over every non-batch axis: shape ``(B,)``."""
        return self.log_density(z).flatten(1).sum(1)

    def sample(
        self, shape: tuple[int, ...], temperature: float = 1.0, *, device=None,
        dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None,
    ) -> Tensor:
        u = self.standard_sample(shape, device=device, dtype=dtype, generator=generator)
        return u * temperature


class StandardNormal(Prior):
    """:math:`\\mathcal N(0, I)`.

    >>> StandardNormal().log_prob(torch.zeros(1, 2))
    tensor([-1.8379])
    """

    def log_density(self, z: Tensor) -> Tensor:
        return -0.5 * (z * z + math.log(2 * math.pi))

    def standard_sample(self, shape, *, device=None, dtype=torch.float32, generator=None) -> Tensor:
        return torch.randn(shape, device=device, dtype=dtype, generator=generator)


class StandardLogistic(Prior):
    """Standard logistic, :math:`p(z) = e^{-z} / (1 + e^{-z})^2`, per dimension.

    Heavier tails than the normal; NICE (section 3.4) uses it because "it tends
    to provide a better behaved gradient" (its score :math:`-\\tanh(z/2)` is
    bounded). Its standard deviation is :math:`\\pi / \\sqrt 3`.

    >>> StandardLogistic().log_prob(torch.zeros(1, 2))
    tensor([-2.7726])
    """

    std = math.pi / math.sqrt(3)

    def log_density(self, z: Tensor) -> Tensor:
        return -(F.softplus(z) + F.softplus(-z))

    def standard_sample(self, shape, *, device=None, dtype=torch.float32, generator=None) -> Tensor:
        u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
        eps = torch.finfo(dtype).eps
        u = u.clamp(eps, 1 - eps)
        return torch.log(u) - torch.log1p(-u)


def make_prior(name: str | Prior) -> Prior:
    """``"normal"`` or ``"logistic"`` (or a `Prior`, returned as is)."""
    if isinstance(name, Prior):
        return name
    priors = {"normal": StandardNormal, "gaussian": StandardNormal, "logistic": StandardLogistic}
    if name not in priors:
        raise ValueError(f"prior must be one of {sorted(priors)}, got {name!r}")
    return priors[name]()
