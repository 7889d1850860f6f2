"""The pictures the chapters draw of 2D flows: density heat maps, samples, warped grids.

A model's density on the plane is drawn on a regular grid: with
:math:`z = f(x)`,

.. math:: p_X(x) = p_Z(f(x))\\,\\Big|\\det \\frac{\\partial f}{\\partial x}(x)\\Big|,

evaluated at every grid point, so that
:math:`\\sum_{ij} p_X(x_{ij})\\,\\Delta x\\,\\Delta y \\approx \\int p_X = 1`
when the grid covers the mass. Samples are drawn by running the flow
backwards, :math:`x = f^{-1}(z)`, :math:`z \\sim p_Z`. `grid_lines` gives
the lines of a square grid, to push through a map and see how it bends space.

matplotlib is imported only inside the functions that draw.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..flow_model import FlowModel
if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Bounds", "density_grid", "figure_png", "grid_lines", "plot_density_and_samples"]

#: ``(low, high)``: the square ``[low, high]^2`` that a picture shows.
Bounds = tuple[float, float]


@torch.no_grad()
def density_grid(
    model: FlowModel, bounds: Bounds = (-4.0, 4.0), resolution: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:math:`p_X` on a ``resolution x resolution`` grid over ``bounds^2``, in the model's dtype.

    Returns ``(xs, ys, density)`` with ``density[i, j]`` the density at
    ``(xs[j], ys[i])``, ready for ``imshow(density, origin="lower")``.
    The model is put in eval mode.

    >>> from flowlib.models import toy_model
    >>> xs, ys, d = density_grid(toy_model("realnvp", 2, 8), resolution=50)
    >>> round(float(d.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])), 2)  # the prior N(0, I) at init
    1.0
    """
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    lo, hi = bounds
    axis = torch.linspace(lo, hi, resolution, dtype=model.dtype, device=model.device)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    model.eval()
    log_p = torch.cat([model.log_prob(chunk) for chunk in points.split(16384)])
    density = log_p.exp().reshape(resolution, resolution).cpu().numpy()
    xs = axis.cpu().numpy()
    return xs, xs.copy(), density


def grid_lines(
    low: float = -2.0, high: float = 2.0, num_lines: int = 9, num_points: int = 100,
    dtype: torch.dtype | None = None,
) -> list[Tensor]:
    """The lines of a square grid over ``[low, high]^2``, each a ``(num_points, 2)`` tensor.

    First the ``num_lines`` horizontal lines :math:`y = c`, then the
    ``num_lines`` vertical lines :math:`x = c`, for :math:`c` evenly spaced
    from ``low`` to ``high``. Push them through a map (a flow's
    ``trajectory``, or ``line @ A.T``) to see how it bends the plane.
    ``dtype`` defaults to torch's default dtype.

    >>> lines = grid_lines(-1.0, 1.0, num_lines=3, num_points=2)
    >>> len(lines), lines[0].tolist(), lines[3].tolist()
    (6, [[-1.0, -1.0], [1.0, -1.0]], [[-1.0, -1.0], [-1.0, 1.0]])
    """
    if num_lines < 2 or num_points < 2:
        raise ValueError(f"need at least 2 lines and 2 points per line, got {num_lines} and {num_points}")
    ticks = torch.linspace(low, high, num_lines, dtype=dtype)
    t = torch.linspace(low, high, num_points, dtype=dtype)
    horizontal = [torch.stack([t, c.expand(num_points)], dim=1) for c in ticks]
    vertical = [torch.stack([c.expand(num_points), t], dim=1) for c in ticks]
    return horizontal + vertical


def plot_density_and_samples(
    model: FlowModel | None, data: Tensor, n_samples: int = 2000, bounds: Bounds = (-4.0, 4.0),
    resolution: int = 150, title: str | None = None, axes: Sequence[Any] | None = None,
    seed: int = 0,
) -> "Figure":
    """Three panels: the data | the learned density (`density_grid`) | samples from the model.

    With ``model=None`` only the data is drawn (the other panels stay empty).
    Pass three matplotlib ``axes`` to draw into an existing figure (one row
    of a bigger grid); otherwise a new figure is made. Samples are drawn from
    a generator seeded with ``seed``, so the picture is reproducible.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = plot_density_and_samples(None, torch.randn(100, 2))
    >>> [ax.get_title() for ax in fig.axes]
    ['data', 'learned density', 'samples']
    """
    import matplotlib.pyplot as plt

    if axes is None:
        # constrained layout places the titles after the equal-aspect panels have their final size
        # (a single tight_layout, computed before, leaves the tops of the titles outside the figure)
        fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6), layout="constrained")
        fig.get_layout_engine().set(w_pad=0.1, h_pad=0.1)        # inches of white around the panels
    else:
        fig = axes[0].figure
    lo, hi = bounds
    d = data.detach().cpu().numpy()[:n_samples]
    axes[0].scatter(d[:, 0], d[:, 1], s=1.5, alpha=0.4, color="C0")
    axes[0].set_title("data" if title is None else f"{title}: data")
    if model is not None:
        _, _, density = density_grid(model, bounds, resolution)
        axes[1].imshow(density, origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
        gen = torch.Generator(device=model.device).manual_seed(seed)
        s = model.sample(n_samples, generator=gen).cpu().numpy()
        axes[2].scatter(s[:, 0], s[:, 1], s=1.5, alpha=0.4, color="C1")
    axes[1].set_title("learned density")
    axes[2].set_title("samples")
    for ax in axes:
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def figure_png(fig: "Figure", dpi: int = 80, close: bool = True) -> bytes:
    """The figure as PNG bytes (for ``ipywidgets.Image``); closes it by default.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> figure_png(plt.figure(figsize=(1, 1)))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        plt.close(fig)
    return buf.getvalue()
