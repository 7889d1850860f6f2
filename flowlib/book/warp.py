"""Chapter 1's invertible 2D warp, its density and its samples.

`Warp2D` maps data to latent in three steps (rotate back by :math:`\\theta`,
un-bend, un-stretch with heavy tails):

.. math::
    v = R(-\\theta)\\,x,\\qquad u = (v_1,\\; v_2 - c\\,(v_1^2 - 1)),\\qquad
    z_i = \\frac{1}{\\tau}\\operatorname{asinh}\\!\\Big(\\frac{\\tau u_i}{s_i}\\Big),

so :math:`\\log|\\det \\partial z/\\partial x| = -\\sum_i \\big[\\log s_i + \\tfrac12\\log(1 + (\\tau u_i / s_i)^2)\\big]`
(the rotation and the bend have determinant 1). With :math:`z \\sim \\mathcal N(0, I)`,
the data density is :math:`p_X(x) = p_Z(f(x))\\,|\\det \\partial f/\\partial x|`
(`warp_density_and_samples`, drawn by `plot_warp`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..flow import Flow, check_shape
from ..flow_model import FlowModel
from .plots import Bounds, density_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Warp2D", "plot_warp", "warp_density_and_samples"]


class Warp2D(Flow):
    """Chapter 1's invertible 2D map (data to latent): rotate, un-bend, un-stretch.

    ``scale`` :math:`(s_1, s_2) > 0`, ``bend`` :math:`c`, ``angle``
    :math:`\\theta` (radians) and ``tails`` :math:`\\tau \\ge 0` (``0`` gives a
    plain linear stretch :math:`z_i = u_i / s_i`). Sampling runs it backwards:
    :math:`u_i = s_i \\sinh(\\tau z_i)/\\tau`, :math:`v = (u_1, u_2 + c(u_1^2-1))`,
    :math:`x = R(\\theta) v`.

    >>> f = Warp2D(scale=(1.5, 0.5), bend=0.4, angle=0.3, tails=0.5)
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> z, log_det = f(x)
    >>> torch.allclose(f.inverse(z)[0], x), torch.allclose(f.inverse(z)[1], -log_det)
    (True, True)
    """

    def __init__(
        self, scale: Sequence[float] = (1.0, 1.0), bend: float = 0.0, angle: float = 0.0,
        tails: float = 0.0,
    ) -> None:
        super().__init__()
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"scale must be two positive numbers, got {tuple(scale)}")
        if tails < 0:
            raise ValueError(f"tails must be >= 0, got {tails}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.bend, self.angle, self.tails = float(bend), float(angle), float(tails)

    @staticmethod
    def _rotate(x: Tensor, angle: float) -> Tensor:
        c, s = math.cos(angle), math.sin(angle)
        return torch.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]], dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(x, (2,), "Warp2D")
        v = self._rotate(x, -self.angle)
        u = torch.stack([v[:, 0], v[:, 1] - self.bend * (v[:, 0] ** 2 - 1)], dim=1)
        r = u / u.new_tensor(self.scale)
        if self.tails > 0:
            z = torch.asinh(self.tails * r) / self.tails
            log_det = -0.5 * torch.log1p((self.tails * r) ** 2).sum(1)
        else:
            z, log_det = r, u.new_zeros(u.shape[0])
        return z, log_det - math.log(self.scale[0] * self.scale[1])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        check_shape(z, (2,), "Warp2D")
        if self.tails > 0:
            r = torch.sinh(self.tails * z) / self.tails
            log_det = torch.log(torch.cosh(self.tails * z)).sum(1)
        else:
            r, log_det = z, z.new_zeros(z.shape[0])
        u = r * z.new_tensor(self.scale)
        v = torch.stack([u[:, 0], u[:, 1] + self.bend * (u[:, 0] ** 2 - 1)], dim=1)
        return self._rotate(v, self.angle), log_det + math.log(self.scale[0] * self.scale[1])


def warp_density_and_samples(
    scale_x: float = 1.0, scale_y: float = 1.0, bend: float = 0.0, angle_deg: float = 0.0,
    tails: float = 0.0, n_samples: int = 2000, bounds: Bounds = (-4.0, 4.0),
    resolution: int = 150, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Density of :math:`x = f^{-1}(z)`, :math:`z \\sim \\mathcal N(0, I)`, for `Warp2D`, and samples.

    Returns ``(xs, ys, density, samples)`` as in `~flowlib.book.plots.density_grid`
    (computed in float64) plus an ``(n_samples, 2)`` array drawn by inverting
    the map with a generator seeded with ``seed``.

    >>> xs, ys, dens, smp = warp_density_and_samples(resolution=20, n_samples=5)
    >>> dens.shape, smp.shape
    ((20, 20), (5, 2))
    """
    flow = Warp2D((scale_x, scale_y), bend, math.radians(angle_deg), tails)
    model = FlowModel(flow, "normal", (2,)).double()
    xs, ys, density = density_grid(model, bounds, resolution)
    gen = torch.Generator().manual_seed(seed)
    samples = model.sample(n_samples, generator=gen).numpy()
    return xs, ys, density, samples


def plot_warp(**params: Any) -> "Figure":
    """Two panels: the density of `warp_density_and_samples` (same keyword arguments) and its samples.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> len(plot_warp(bend=0.5, resolution=10, n_samples=10).axes)
    2
    """
    import matplotlib.pyplot as plt

    xs, ys, density, samples = warp_density_and_samples(**params)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 4))
    extent = (xs[0], xs[-1], ys[0], ys[-1])
    a.imshow(density, origin="lower", extent=extent, cmap="viridis")
    a.set_title(r"$p_X(x) = p_Z(f(x))\,|\det \partial f/\partial x|$")
    b.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4)
    b.set_xlim(xs[0], xs[-1])
    b.set_ylim(ys[0], ys[-1])
    b.set_title(r"samples $x = f^{-1}(z)$")
    for ax in (a, b):
        ax.set_aspect("equal")
    fig.tight_layout()
    return fig
