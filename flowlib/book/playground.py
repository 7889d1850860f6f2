"""The training playground of chapters 2 and 3: controls wired to `flowlib.training.fit` and `flowlib.book.plots`.

`playground` fits a small flow to a 2D toy density by maximum likelihood,
minimising the mean negative log-likelihood in nats,

.. math:: \\mathcal L = -\\frac1B \\sum_b \\Big[\\log p_Z(f(x_b)) + \\log\\Big|\\det \\frac{\\partial f}{\\partial x}(x_b)\\Big|\\Big],

with Adam and a cosine learning-rate decay (`flowlib.training.fit.fit`), then reports
the test NLL (`flowlib.training.evaluate.evaluate`) and draws data | learned density |
samples (`flowlib.book.plots.plot_density_and_samples`); `train_playground` is
that Train button without the widget. The controls are built
(`playground_controls`), then wired (`_PlaygroundWiring`). Chapter 1's widget
and `show`, which puts any of these widgets on a page with its picture, are in
`flowlib.book.widgets`.

The widgets hold no logic of their own: every number and picture comes from
those functions, which the tests call directly. ipywidgets and matplotlib
are imported only when a widget or a picture is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable

from .analysis import count_parameters
from ..training.fit import evaluate, fit
from ..flow_model import FlowModel
from ..models import toy_model
from .plots import figure_png, plot_density_and_samples
from ..datasets.toy import TOY_DENSITIES, toy_splits

__all__ = [
    "DEFAULTS", "DEFAULT_LR", "PLAYGROUND_CLASSES", "QUICK_STEPS", "PlaygroundControls", "PlaygroundRun", "draw_playground",
    "playground", "playground_controls", "train_playground",
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

#: The playground's settings for each model kind (arguments left ``None``),
#: with 10000 training points, batches of 256 and seed 0: 15-25 s of training
#: on one CPU core. Chosen by measuring, on all six toy densities, the test NLL
#: minus the density's true NLL on the same 5000 test points (its log-density
#: by numerical integrals of the generating process; the same numbers as
#: `flowlib.book.baselines.true_nll` for the four it covers), and comparing with a
#: run of about three times the work (16 couplings, 6000 steps). In nats, for two_moons,
#: 8gaussians, checkerboard, pinwheel, 2spirals, rings (the long run in brackets):
#:
#: * RealNVP, 8 couplings of width 64, 4000 steps, lr 3e-3: 0.02, 0.09, 0.20,
#:   0.09, 0.22, 0.61 (0.02, 0.07, 0.09, 0.05, 0.17, 0.50). The earlier
#:   defaults, 6 couplings and 1000 steps: 0.05, 0.17, 0.24, 0.19, 0.47, 0.75.
#: * NICE, 12 couplings of width 64, 3000 steps, lr 1e-3: 0.11, 0.44, 0.42,
#:   0.21, 0.38, 1.01 (0.10, 0.38, 0.40, 0.11, 0.37, 1.01). The earlier
#:   defaults: 0.22, 0.79, 0.57, 0.43, 0.99, 1.01. At lr 3e-3 NICE stays one
#:   wide blob on 8gaussians (1.52).
#:
#: So each kind gets within about 0.1 nats of what it reaches with three times
#: the work; what is left is the model's limit. Neither fits ``rings``; NICE
#: does not move from its starting blob there (1.01 at every setting tried) and
#: fits ``8gaussians`` only roughly: both densities are symmetric under
#: :math:`x_i \to -x_i`, so at NICE's start (identity couplings) the expected
#: gradient of every coupling vanishes (chapter 3 measures it).
DEFAULTS: dict[str, dict[str, Any]] = {
    "nice": {"num_couplings": 12, "hidden": 64, "steps": 3000, "lr": 1e-3},
    "realnvp": {"num_couplings": 8, "hidden": 64, "steps": 4000, "lr": 3e-3},
}

#: The default learning rate of each model kind (``DEFAULTS[kind]["lr"]``).
DEFAULT_LR: dict[str, float] = {kind: float(d["lr"]) for kind, d in DEFAULTS.items()}

#: Training steps of `show`'s picture of the playground in quick mode (`flowlib.book.chapter.quick_mode`).
QUICK_STEPS = 60



def draw_playground(model: FlowModel | None, data: Any, title: str | None = None) -> bytes:
    """The playground's picture as PNG bytes: `~flowlib.book.plots.plot_density_and_samples` of ``model`` and ``data``.

    With ``model=None`` only the data panel is filled.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import torch
    >>> draw_playground(None, torch.randn(100, 2))[:4]
    b'\\x89PNG'
    """
    return figure_png(plot_density_and_samples(model, data, title=title))


@dataclass
class PlaygroundRun:
    """One press of Train: the trained ``model``, its test NLL (nats), the ``status`` line and the picture (``png``)."""

    model: FlowModel
    nll: float
    status: str
    png: bytes


def train_playground(
    density: str, kind: str, num_couplings: int, hidden: int, steps: int, lr: float,
    n_train: int = 10000, n_test: int = 5000, batch_size: int = 256, seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> PlaygroundRun:
    """What the playground's Train button does, without the widget.

    Draws ``n_train`` and ``n_test`` independent points of ``density``
    (`~flowlib.datasets.toy.toy_splits`, seeded with ``seed``), builds
    `~flowlib.models.toy_model` (seeded with ``seed``), fits it with
    `~flowlib.training.fit.fit` (nats, Adam, cosine decay from ``lr``, gradients
    clipped at 10; ``callback(step, loss)`` every 50 steps), evaluates the
    test NLL with `~flowlib.training.evaluate.evaluate` and draws `draw_playground`.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> run = train_playground("rings", "nice", 1, 4, steps=20, lr=1e-3, n_train=256, n_test=64, batch_size=64)
    >>> run.status.startswith("rings, nice, ") and "test NLL" in run.status, run.png[:4]
    (True, b'\\x89PNG')
    """
    train, test = toy_splits(density, n_train, n_test, seed=seed)
    model = toy_model(kind, num_couplings, hidden, seed=seed)
    fit(model, train, steps=steps, batch_size=batch_size, lr=lr, clip_grad=10.0, schedule="cosine",
        unit="nats", seed=seed, callback=callback)
    nll = evaluate(model, test).nats
    status = f"{density}, {kind}, {count_parameters(model)} parameters: test NLL {nll:.3f} nats"
    return PlaygroundRun(model, nll, status, draw_playground(model, train, title=f"{density}, {kind}"))


def playground(
    density: str = "two_moons", kind: str = "realnvp", num_couplings: int | None = None,
    hidden: int | None = None, steps: int | None = None, lr: float | None = None, n_train: int = 10000,
    n_test: int = 5000, batch_size: int = 256, seed: int = 0,
) -> Any:
    """An ipywidgets UI: pick a toy density and a model, press Train, see the fit.

    Controls (``description`` in quotes, CSS class after it): Dropdown
    ``"density"`` (``flowlib-density``), Dropdown ``"model"``
    (``flowlib-model``: ``nice`` or ``realnvp``), IntSliders ``"couplings"``
    (``flowlib-couplings``), ``"hidden"`` (``flowlib-hidden``), ``"steps"``
    (``flowlib-steps``), FloatLogSlider ``"lr"`` (``flowlib-lr``), Button
    ``"Train"`` (``flowlib-train``), an IntProgress (``flowlib-progress``),
    an HTML status line with the loss and finally the test NLL
    (``flowlib-status``), and an ``ipywidgets.Image`` of PNG bytes
    (``flowlib-plot``). The whole box has class ``flowlib-playground``; the
    names are in `PLAYGROUND_CLASSES` and the widgets in ``box.parts``.

    Train runs `train_playground` with the controls' values. The picture
    shows the data of the chosen density until the first Train; from then on
    it shows the result of the last training (data | learned density |
    samples, with the test NLL in the status line) until the next Train
    finishes. A control changed while a training runs therefore never
    replaces its result, whenever the kernel gets the change (a front end's
    messages wait in the kernel's queue until the training ends); the status
    line says which density the next Train fits. While it trains, the
    controls are disabled.

    Settings left ``None`` start at `DEFAULTS` for the model kind and follow
    the model dropdown until their control is moved. ``box.picture(quick)``
    presses Train (for at most `QUICK_STEPS` steps when ``quick``; the steps
    slider keeps its value) and returns the picture and what it shows: what
    `show` displays for front ends without widgets.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> box = playground("rings", num_couplings=1, hidden=4, steps=20, n_train=256, n_test=64, batch_size=64)
    >>> box.parts["train"].click()
    >>> box.parts["progress"].value, "test NLL" in box.parts["status"].value
    (20, True)
    """
    if kind not in DEFAULTS:
        raise ValueError(f"kind must be one of {sorted(DEFAULTS)}, got {kind!r}")
    given = {"num_couplings": num_couplings, "hidden": hidden, "steps": steps, "lr": lr}
    start = {k: DEFAULTS[kind][k] if v is None else v for k, v in given.items()}
    controls = playground_controls(density, kind, start)
    data = dict(n_train=n_train, n_test=n_test, batch_size=batch_size, seed=seed)
    return _PlaygroundWiring(controls, data).box


@dataclass
class PlaygroundControls:
    """The playground's widgets, built but not yet wired (`playground_controls`)."""

    density: Any
    model: Any
    couplings: Any
    hidden: Any
    steps: Any
    lr: Any
    train: Any
    progress: Any
    status: Any
    plot: Any

    @property
    def parts(self) -> dict[str, Any]:
        """Every widget by its name in `PLAYGROUND_CLASSES`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def sliders(self) -> dict[str, Any]:
        """The sliders by the `DEFAULTS` key they set."""
        return {"num_couplings": self.couplings, "hidden": self.hidden, "steps": self.steps, "lr": self.lr}

    @property
    def settings(self) -> list[Any]:
        """The controls that choose what Train fits (disabled while it trains, with the button)."""
        return [self.density, self.model, self.couplings, self.hidden, self.steps, self.lr]


def playground_controls(density: str, kind: str, start: dict[str, Any]) -> PlaygroundControls:
    """The widgets of `playground`, at ``start`` (`DEFAULTS`' keys), each with its CSS class."""
    import ipywidgets as w

    controls = PlaygroundControls(
        density=w.Dropdown(options=list(TOY_DENSITIES), value=density, description="density"),
        model=w.Dropdown(options=list(DEFAULTS), value=kind, description="model"),
        couplings=w.IntSlider(value=start["num_couplings"], min=1, max=16, description="couplings"),
        hidden=w.IntSlider(value=start["hidden"], min=4, max=256, step=4, description="hidden"),
        steps=w.IntSlider(value=start["steps"], min=20, max=10000, step=20, description="steps"),
        lr=w.FloatLogSlider(value=start["lr"], base=10, min=-4, max=-1, step=0.1, description="lr",
                            readout_format=".0e"),
        train=w.Button(description="Train", button_style="primary", icon="play"),
        progress=w.IntProgress(value=0, min=0, max=start["steps"], description="progress"),
        status=w.HTML(value="press Train"),
        plot=w.Image(format="png"),
    )
    for key, widget in controls.parts.items():
        widget.add_class(PLAYGROUND_CLASSES[key])
    return controls


class _PlaygroundWiring:
    """What the playground's controls do: show the data, follow the model kind, train, draw its picture."""

    def __init__(self, controls: PlaygroundControls, data: dict[str, int]) -> None:
        import ipywidgets as w

        self.c, self.data = controls, data
        self.training = False
        self.result: tuple[str, str] | None = None  # (density, status line) of the last Train
        self.show_data()
        controls.density.observe(self.show_data, names="value")
        controls.model.observe(self.follow_kind, names="value")
        controls.train.on_click(self.on_train)
        c = controls
        self.box = w.VBox([w.VBox(c.settings + [w.HBox([c.train, c.progress]), c.status]), c.plot])
        self.box.add_class(PLAYGROUND_CLASSES["root"])
        self.box.parts = c.parts  # direct access for tests and readers
        self.box.picture = self.picture

    def show_data(self, change: Any = None) -> None:
        """The data until the first Train; then the last result, saying when the density has changed since."""
        c = self.c
        if self.training:
            return
        if self.result is None:
            train, _ = toy_splits(c.density.value, self.data["n_train"], self.data["n_test"], seed=self.data["seed"])
            c.plot.value = draw_playground(None, train)
            c.status.value = "press Train"
        else:
            shown, line = self.result
            c.status.value = line if c.density.value == shown else f"{line}; press Train to fit {c.density.value}"

    def follow_kind(self, change: Any) -> None:
        """A new model kind moves the sliders not moved by hand to its `DEFAULTS`."""
        old, new = DEFAULTS[change["old"]], DEFAULTS[change["new"]]
        for key, slider in self.c.sliders.items():
            if math.isclose(slider.value, old[key], rel_tol=1e-6):
                slider.value = new[key]

    def on_train(self, _: Any = None) -> None:
        """Train with the controls' values (`train_playground`), the controls disabled meanwhile."""
        c = self.c
        name, total = c.density.value, c.steps.value
        self._enable(False)
        try:
            c.progress.max, c.progress.value = total, 0
            run = train_playground(name, c.model.value, c.couplings.value, c.hidden.value, total, c.lr.value,
                                   n_train=self.data["n_train"], n_test=self.data["n_test"],
                                   batch_size=self.data["batch_size"], seed=self.data["seed"],
                                   callback=lambda step, loss: self._report(step, loss, total))
            self.result = (name, run.status)
            c.plot.value = run.png
        except Exception as err:  # keep the UI alive and say what went wrong
            c.status.value = f"<b>error:</b> {type(err).__name__}: {err}"
            raise
        finally:
            self._enable(True)
        self.show_data()

    def _report(self, step: int, loss: float, total: int) -> None:
        self.c.progress.value = step
        self.c.status.value = f"step {step}/{total}, train loss {loss:.3f} nats"

    def _enable(self, enabled: bool) -> None:
        self.training = not enabled
        for widget in self.c.settings + [self.c.train]:
            widget.disabled = not enabled

    def picture(self, quick: bool = False) -> tuple[bytes, str]:
        """Press Train (for at most ``QUICK_STEPS`` steps when ``quick``); the picture and what it shows."""
        c = self.c
        chosen = c.steps.value
        if quick:  # the slider goes back to the chosen value, for the reader's next Train
            c.steps.value = min(chosen, QUICK_STEPS)
        described = (f"{c.couplings.value} couplings of width {c.hidden.value}, {c.steps.value} steps, "
                     f"lr {_scientific(c.lr.value)}")
        try:
            self.on_train()
        finally:
            c.steps.value = chosen
        return bytes(c.plot.value), f"the playground after pressing Train with its settings ({described}): {c.status.value}"


def _scientific(value: float) -> str:
    """``1e-3`` for 0.001: the slider's readout, without the exponent's leading zero.

    >>> _scientific(0.003), _scientific(0.0001)
    ('3e-3', '1e-4')
    """
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"
