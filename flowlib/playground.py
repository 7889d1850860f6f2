"""Training small flows on 2D toy densities, and the widgets of chapters 1-3.

Everything here is a plain function that tests call directly; the widgets
(`playground`, `transform_playground`) only wire controls to them.

A flow model is fitted by maximum likelihood: with :math:`z = f(x)`,

.. math:: \\mathcal L = -\\frac1B \\sum_b \\Big[\\log p_Z(f(x_b)) + \\log\\Big|\\det \\frac{\\partial f}{\\partial x}(x_b)\\Big|\\Big],

the mean negative log-likelihood in nats, minimised with Adam.

Chapter 1's transform, `Warp2D`, maps data to latent in three steps
(rotate back by :math:`\\theta`, un-bend, un-stretch with heavy tails):

.. math::
    v = R(-\\theta)\\,x,\\qquad u = (v_1,\\; v_2 - c\\,(v_1^2 - 1)),\\qquad
    z_i = \\frac{1}{\\tau}\\operatorname{asinh}\\!\\Big(\\frac{\\tau u_i}{s_i}\\Big),

so :math:`\\log|\\det \\partial z/\\partial x| = -\\sum_i \\big[\\log s_i + \\tfrac12\\log(1 + (\\tau u_i / s_i)^2)\\big]`
(the rotation and the bend have determinant 1).

>>> model = make_toy_model("nice", num_couplings=2, hidden=8)
>>> data = torch.randn(64, 2)
>>> losses = train_toy(model, data, steps=3, lr=1e-3, batch_size=16)
>>> len(losses), evaluate_nll(model, data) > 0
(3, True)
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .flow import Flow, check_shape
from .models import FlowModel, nice, realnvp
from .toy import TOY_DENSITIES, toy_splits
from .train import evaluate

if TYPE_CHECKING:  # matplotlib and ipywidgets are imported only where used
    from matplotlib.figure import Figure

__all__ = [
    "PLAYGROUND_CLASSES", "Warp2D", "make_toy_model", "num_parameters", "train_toy",
    "evaluate_nll", "density_grid", "plot_density_and_samples", "figure_png",
    "warp_density_and_samples", "plot_warp", "playground", "transform_playground",
]

#: CSS classes that the widgets put on their parts (a browser test relies on them).
PLAYGROUND_CLASSES: dict[str, str] = {
    "root": "flowlib-playground",
    "density": "flowlib-density",
    "model": "flowlib-model",
    "couplings": "flowlib-couplings",
    "hidden": "flowlib-hidden",
    "steps": "flowlib-steps",
    "lr": "flowlib-lr",
    "train": "flowlib-train",
    "progress": "flowlib-progress",
    "status": "flowlib-status",
    "plot": "flowlib-plot",
    "transform_root": "flowlib-transform-playground",
}

Bounds = tuple[float, float]


# ----------------------------------------------------------------------------- chapter 1


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

    def _rotate(self, x: Tensor, angle: float) -> Tensor:
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

    Returns ``(xs, ys, density, samples)`` as in `density_grid` plus an
    ``(n_samples, 2)`` array drawn by inverting the map.

    >>> xs, ys, dens, smp = warp_density_and_samples(resolution=20, n_samples=5)
    >>> dens.shape, smp.shape
    ((20, 20), (5, 2))
    """
    flow = Warp2D((scale_x, scale_y), bend, math.radians(angle_deg), tails)
    model = FlowModel(flow, "normal", (2,))
    xs, ys, density = density_grid(model, bounds, resolution)
    z = torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    samples = flow.inverse(z)[0].numpy()
    return xs, ys, density, samples


def plot_warp(**params: Any) -> "Figure":
    """Two panels: the density of `warp_density_and_samples` and its samples."""
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


# ----------------------------------------------------------------------------- chapters 2-3


def make_toy_model(
    kind: str = "realnvp", num_couplings: int = 8, hidden: int = 64, num_hidden_layers: int = 2,
    prior: str | None = None, seed: int | None = 0,
) -> FlowModel:
    """A 2D flow for the toy densities.

    * ``"nice"``: additive couplings on alternating 1-D halves,
      :math:`h_2 = h_2 + m(h_1)`, then a diagonal scaling; logistic prior by default.
    * ``"realnvp"``: affine couplings, :math:`h_2 = h_2 e^{s(h_1)} + t(h_1)`;
      normal prior by default.

    ``seed`` (if not ``None``) makes the initial weights reproducible.

    >>> num_parameters(make_toy_model("nice", 4, 16)), num_parameters(make_toy_model("realnvp", 4, 16))
    (1286, 1356)
    """
    if kind not in ("nice", "realnvp"):
        raise ValueError(f"kind must be 'nice' or 'realnvp', got {kind!r}")
    if seed is not None:
        torch.manual_seed(seed)
    if kind == "nice":
        return nice(2, num_couplings, hidden, num_hidden_layers, prior=prior or "logistic")
    return realnvp(2, num_couplings, hidden, num_hidden_layers, prior=prior or "normal")


def num_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_toy(
    model: FlowModel, data: Tensor, steps: int = 2000, lr: float = 1e-3, batch_size: int = 256,
    seed: int = 0, callback: Callable[[int, float], None] | None = None, callback_every: int = 50,
    cosine: bool = True, clip: float | None = 10.0,
) -> list[float]:
    """Fit ``model`` to ``data`` by maximum likelihood with Adam; returns the loss of every step.

    Minibatches of ``batch_size`` are drawn with replacement from ``data``
    (seeded). With ``cosine`` the learning rate decays from ``lr`` to 0 along
    a cosine. ``callback(step, mean_recent_loss)`` runs every
    ``callback_every`` steps and after the last one (for progress bars).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if data.dim() != 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape (N, D) with N >= 1, got {tuple(data.shape)}")
    ref = next(model.parameters())
    data = data.to(device=ref.device, dtype=ref.dtype)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    model.train()
    losses: list[float] = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen).to(data.device)
        loss = -model.log_prob(data[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
        if callback is not None and (step % callback_every == 0 or step == steps):
            recent = losses[-callback_every:]
            callback(step, sum(recent) / len(recent))
    model.eval()
    return losses


def evaluate_nll(model: FlowModel, data: Tensor, batch_size: int = 8192) -> float:
    """Mean negative log-likelihood of ``data`` under ``model``, in nats per example."""
    ref = next(model.parameters())
    return evaluate(model, data.to(dtype=ref.dtype), batch_size)[1]


@torch.no_grad()
def density_grid(
    model: FlowModel, bounds: Bounds = (-4.0, 4.0), resolution: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:math:`p_X` on a ``resolution x resolution`` grid over ``bounds^2``.

    Returns ``(xs, ys, density)`` with ``density[i, j]`` the density at
    ``(xs[j], ys[i])``, ready for ``imshow(density, origin="lower")``.

    >>> xs, ys, d = density_grid(make_toy_model("realnvp", 2, 8), resolution=50)
    >>> round(float(d.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])), 2)  # the prior N(0, I) at init
    1.0
    """
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    ref = next(model.parameters(), None)
    dtype = ref.dtype if ref is not None else torch.float64
    device = ref.device if ref is not None else None
    lo, hi = bounds
    xs = torch.linspace(lo, hi, resolution, dtype=dtype, device=device)
    ys = torch.linspace(lo, hi, resolution, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    model.eval()
    log_p = torch.cat([model.log_prob(chunk) for chunk in points.split(16384)])
    density = log_p.exp().reshape(resolution, resolution)
    return xs.cpu().numpy(), ys.cpu().numpy(), density.cpu().numpy()


def plot_density_and_samples(
    model: FlowModel | None, data: Tensor, n_samples: int = 2000, bounds: Bounds = (-4.0, 4.0),
    resolution: int = 150, title: str | None = None, axes: Sequence[Any] | None = None,
    seed: int = 0,
) -> "Figure":
    """Three panels: the data | the learned density | samples from the model.

    With ``model=None`` only the data is drawn (the other panels stay empty).
    Pass three matplotlib ``axes`` to draw into an existing figure (one row
    of a bigger grid); otherwise a new figure is made.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
    else:
        fig = axes[0].figure
    lo, hi = bounds
    d = data.detach().cpu().numpy()[:n_samples]
    axes[0].scatter(d[:, 0], d[:, 1], s=1.5, alpha=0.4, color="C0")
    axes[0].set_title("data" if title is None else f"{title}: data")
    if model is not None:
        xs, ys, density = density_grid(model, bounds, resolution)
        axes[1].imshow(density, origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
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
    fig.tight_layout()
    return fig


def figure_png(fig: "Figure", dpi: int = 80, close: bool = True) -> bytes:
    """The figure as PNG bytes (for ``ipywidgets.Image``); closes it by default."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------------------------- widgets


def playground(
    density: str = "two_moons", kind: str = "realnvp", num_couplings: int = 6, hidden: int = 64,
    steps: int = 1000, lr: float = 3e-3, n_train: int = 10000, n_test: int = 5000,
    batch_size: int = 256, seed: int = 0,
) -> Any:
    """An ipywidgets UI: pick a toy density and a model, press Train, see the fit.

    Controls (``description`` in quotes, CSS class after it): Dropdown
    ``"density"`` (``flowlib-density``), Dropdown ``"model"``
    (``flowlib-model``: ``nice`` or ``realnvp``), IntSliders ``"couplings"``
    (``flowlib-couplings``), ``"hidden"`` (``flowlib-hidden``), ``"steps"``
    (``flowlib-steps``), FloatLogSlider ``"lr"`` (``flowlib-lr``), Button
    ``"Train"`` (``flowlib-train``), an IntProgress (``flowlib-progress``),
    an HTML status line with the loss and finally the test NLL
    (``flowlib-status``), and an ``ipywidgets.Image`` of PNG bytes showing
    data | learned density | samples (``flowlib-plot``; its ``value``
    changes after each training run). The whole box has class
    ``flowlib-playground``. The names are in `PLAYGROUND_CLASSES`.

    All work is done by `make_toy_model`, `train_toy`, `evaluate_nll` and
    `plot_density_and_samples`; the button handler only calls them.
    """
    import ipywidgets as w

    c = PLAYGROUND_CLASSES
    density_w = w.Dropdown(options=list(TOY_DENSITIES), value=density, description="density")
    model_w = w.Dropdown(options=["nice", "realnvp"], value=kind, description="model")
    couplings_w = w.IntSlider(value=num_couplings, min=1, max=16, description="couplings")
    hidden_w = w.IntSlider(value=hidden, min=4, max=256, step=4, description="hidden")
    steps_w = w.IntSlider(value=steps, min=20, max=5000, step=20, description="steps")
    lr_w = w.FloatLogSlider(value=lr, base=10, min=-4, max=-1, step=0.1, description="lr",
                            readout_format=".0e")
    button = w.Button(description="Train", button_style="primary", icon="play")
    progress = w.IntProgress(value=0, min=0, max=steps, description="progress")
    status = w.HTML(value="press Train")
    train0, _ = toy_splits(density, n_train, n_test, seed=seed)
    image = w.Image(value=figure_png(plot_density_and_samples(None, train0)), format="png")
    parts = {"density": density_w, "model": model_w, "couplings": couplings_w, "hidden": hidden_w,
             "steps": steps_w, "lr": lr_w, "train": button, "progress": progress,
             "status": status, "plot": image}
    for key, widget in parts.items():
        widget.add_class(c[key])

    def show_data(change: Any = None) -> None:
        train, _ = toy_splits(density_w.value, n_train, n_test, seed=seed)
        image.value = figure_png(plot_density_and_samples(None, train))

    def on_train(_: Any = None) -> None:
        button.disabled = True
        try:
            train, test = toy_splits(density_w.value, n_train, n_test, seed=seed)
            model = make_toy_model(model_w.value, couplings_w.value, hidden_w.value, seed=seed)
            progress.max, progress.value = steps_w.value, 0

            def report(step: int, loss: float) -> None:
                progress.value = step
                status.value = f"step {step}/{steps_w.value}, train loss {loss:.3f} nats"

            train_toy(model, train, steps_w.value, lr_w.value, batch_size, seed, report)
            nll = evaluate_nll(model, test)
            status.value = (f"{model_w.value}, {num_parameters(model)} parameters: "
                            f"test NLL {nll:.3f} nats")
            title = f"{density_w.value}, {model_w.value}"
            image.value = figure_png(plot_density_and_samples(model, train, title=title))
        except Exception as err:  # keep the UI alive and say what went wrong
            status.value = f"<b>error:</b> {type(err).__name__}: {err}"
            raise
        finally:
            button.disabled = False

    density_w.observe(show_data, names="value")
    button.on_click(on_train)
    controls = w.VBox([density_w, model_w, couplings_w, hidden_w, steps_w, lr_w,
                       w.HBox([button, progress]), status])
    box = w.VBox([controls, image])
    box.add_class(c["root"])
    box.parts = parts  # direct access for tests and readers
    return box


def transform_playground(**initial: float) -> Any:
    """Chapter 1's widget: sliders for `Warp2D`'s parameters; the density and samples redraw.

    Sliders (descriptions) ``"scale x"``, ``"scale y"``, ``"bend"``,
    ``"angle"`` (degrees), ``"tails"``; an ``ipywidgets.Image`` with class
    ``flowlib-plot`` drawn by `plot_warp`. The box has class
    ``flowlib-transform-playground``.
    """
    import ipywidgets as w

    values = {"scale_x": 1.0, "scale_y": 1.0, "bend": 0.0, "angle_deg": 0.0, "tails": 0.0}
    values.update(initial)
    sliders = {
        "scale_x": w.FloatSlider(value=values["scale_x"], min=0.2, max=2.5, step=0.1, description="scale x"),
        "scale_y": w.FloatSlider(value=values["scale_y"], min=0.2, max=2.5, step=0.1, description="scale y"),
        "bend": w.FloatSlider(value=values["bend"], min=-1.0, max=1.0, step=0.05, description="bend"),
        "angle_deg": w.FloatSlider(value=values["angle_deg"], min=-90, max=90, step=5, description="angle"),
        "tails": w.FloatSlider(value=values["tails"], min=0.0, max=1.5, step=0.1, description="tails"),
    }
    image = w.Image(format="png")
    image.add_class(PLAYGROUND_CLASSES["plot"])

    def redraw(change: Any = None) -> None:
        image.value = figure_png(plot_warp(**{k: s.value for k, s in sliders.items()}))

    for s in sliders.values():
        s.observe(redraw, names="value")
    redraw()
    box = w.VBox([w.VBox(list(sliders.values())), image])
    box.add_class(PLAYGROUND_CLASSES["transform_root"])
    box.parts = {**sliders, "plot": image}
    return box
