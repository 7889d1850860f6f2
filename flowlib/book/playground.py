"""The training playground of chapters 2 and 3: controls wired to `flowlib.training.fit` and `flowlib.book.plots`.

`playground` fits a small flow to a 2D toy density by maximum likelihood,
minimising the mean negative log-likelihood in nats,

.. math:: \\mathcal L = -\\frac1B \\sum_b \\Big[\\log p_Z(f(x_b)) + \\log\\Big|\\det \\frac{\\partial f}{\\partial x}(x_b)\\Big|\\Big],

with Adam and a cosine learning-rate decay (`flowlib.training.fit.fit`), then reports
the test NLL (`flowlib.training.evaluate.evaluate`) and draws data | learned density |
samples (`flowlib.book.plots.plot_density_and_samples`); `train_playground` is
that Train button without the widget. The controls are built
(`playground_controls`), then wired (`_PlaygroundWiring`). What the widget
says and does is made by plain functions in `flowlib.book.playground_training`
(re-exported here): `training_line` while it trains (through
`progress_reporter`, `fit`'s callback), `result_line` when done,
`idle_line` between trainings, and `press_seed` decides what a press of Train
does (a press with the settings of the result on display trains nothing; a
second one retrains with the next seed). Chapter 1's widget
and `show`, which puts any of these widgets on a page with its picture, are in
`flowlib.book.widgets`.

The widgets hold no logic of their own: every number and picture comes from
those functions, which the tests call directly. ipywidgets and matplotlib
are imported only when a widget or a picture is made.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields
from typing import Any

from ..datasets.toy import TOY_DENSITIES, toy_splits
from .playground_training import (DEFAULT_LR, DEFAULTS, PROGRESS_EVERY, QUICK_STEPS, PlaygroundRun, PlaygroundSettings,
                                  draw_playground, idle_line, press_seed, progress_reporter, result_line,
                                  train_playground, training_line)

__all__ = [
    "DEFAULTS", "DEFAULT_LR", "PLAYGROUND_CLASSES", "PROGRESS_EVERY", "QUICK_STEPS", "PlaygroundControls", "PlaygroundRun",
    "PlaygroundSettings", "draw_playground", "idle_line", "playground", "playground_controls", "press_seed",
    "progress_reporter", "result_line", "train_playground", "training_line",
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

def playground(
    density: str = "two_moons", kind: str = "realnvp", num_couplings: int | None = None,
    hidden: int | None = None, steps: int | None = None, lr: float | None = None, n_train: int = 10000,
    n_test: int = 5000, batch_size: int = 256, seed: int = 0,
) -> Any:
    """An ipywidgets UI: pick a toy density and a model, press Train, see the fit.

    Controls (``description`` in quotes, CSS class after it): Dropdown
    ``"density"`` (``flowlib-density``), Dropdown ``"model"``
    (``flowlib-model``: ``nice``, ``realnvp``, ``maf``, ``spline_coupling`` or
    ``spline_ar``, `~flowlib.models.toy_model`'s kinds), IntSliders ``"couplings"``
    (``flowlib-couplings``), ``"hidden"`` (``flowlib-hidden``), ``"steps"``
    (``flowlib-steps``), FloatLogSlider ``"lr"`` (``flowlib-lr``), Button
    ``"Train"`` (``flowlib-train``), an IntProgress (``flowlib-progress``),
    an HTML status line with the loss and finally the test NLL
    (``flowlib-status``), and an ``ipywidgets.Image`` of PNG bytes
    (``flowlib-plot``). The whole box has class ``flowlib-playground``; the
    names are in `PLAYGROUND_CLASSES` and the widgets in ``box.parts``.

    Train runs `train_playground` with the controls' values. From the moment
    it starts, the progress bar and the status line follow the training
    (`training_line`: the settings, the seed, the step and the train loss,
    several times a second); when it ends, the status line names the settings,
    the seed, the seconds and the test NLL (`result_line`). The picture
    shows the data of the chosen density until the first Train; from then on
    it shows the result of the last training (data | learned density |
    samples) until the next Train finishes. A control changed while a
    training runs therefore never replaces its result, whenever the kernel
    gets the change (a front end's messages wait in the kernel's queue until
    the training ends); the status line says what the next Train fits
    (`idle_line`). While it trains, the controls are disabled.

    A press with the settings of the result on display trains nothing: the
    status line says that this result is current and that a second press
    retrains with the next seed, which the second press does (`press_seed`).
    A changed setting trains with the seed of the result on display. Every
    seed draws the same data (``seed``); it changes the model's start and the
    order of the batches.

    Settings left ``None`` start at `DEFAULTS` for the model kind and follow
    the model dropdown until their control is moved. ``box.picture(quick)``
    trains with the controls' settings and ``seed`` (for at most
    `QUICK_STEPS` steps when ``quick``; the steps slider keeps its value) and
    returns the picture and what it shows: what `show` displays for front
    ends without widgets.

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
        self.shown: PlaygroundRun | None = None  # the result on display
        self.armed = False  # the last press found it current, and nothing changed since
        self.show_data()
        controls.model.observe(self.follow_kind, names="value")
        for widget in controls.settings:
            widget.observe(self.on_change, names="value")
        controls.train.on_click(self.on_train)
        c = controls
        self.box = w.VBox([w.VBox(c.settings + [w.HBox([c.train, c.progress]), c.status]), c.plot])
        self.box.add_class(PLAYGROUND_CLASSES["root"])
        self.box.parts = c.parts  # direct access for tests and readers
        self.box.picture = self.picture

    def wanted(self) -> PlaygroundSettings:
        """The controls' settings: what the next Train fits."""
        c = self.c
        return PlaygroundSettings(c.density.value, c.model.value, c.couplings.value, c.hidden.value, c.steps.value,
                                  c.lr.value)

    def show_data(self) -> None:
        """The data of the chosen density, before the first Train."""
        train, _ = toy_splits(self.c.density.value, self.data["n_train"], self.data["n_test"], seed=self.data["seed"])
        self.c.plot.value = draw_playground(None, train)
        self.c.status.value = "press Train"

    def on_change(self, change: Any = None) -> None:
        """A changed setting: the data until the first Train; then the last result, saying what Train would fit."""
        if self.training:
            return
        self.armed = False
        if self.shown is None:
            if change is None or change["owner"] is self.c.density:
                self.show_data()
            return
        self.c.status.value = idle_line(self.shown, self.wanted(), self.armed)

    def follow_kind(self, change: Any) -> None:
        """A new model kind moves the sliders not moved by hand to its `DEFAULTS`."""
        old, new = DEFAULTS[change["old"]], DEFAULTS[change["new"]]
        for key, slider in self.c.sliders.items():
            if math.isclose(slider.value, old[key], rel_tol=1e-6):
                slider.value = new[key]

    def on_train(self, _: Any = None) -> None:
        """A press of Train: train with the seed `press_seed` gives, or say that the result is current."""
        wanted = self.wanted()
        seed = press_seed(self.shown, wanted, self.armed, self.data["seed"])
        if seed is None:
            self.armed = True
            self.c.status.value = idle_line(self.shown, wanted, self.armed)
        else:
            self.train(wanted, seed)

    def train(self, settings: PlaygroundSettings, seed: int) -> None:
        """Train ``settings`` with ``seed`` (`train_playground`), the controls disabled meanwhile; show the result."""
        c = self.c
        self._enable(False)
        try:
            c.progress.max, c.progress.value = settings.steps, 0
            c.status.value = training_line(settings, seed)
            run = train_playground(*astuple(settings), n_train=self.data["n_train"], n_test=self.data["n_test"],
                                   batch_size=self.data["batch_size"], seed=seed, data_seed=self.data["seed"],
                                   callback=progress_reporter(settings, seed, self._report))
            self.shown = run
            c.plot.value = run.png
        except Exception as err:  # keep the UI alive and say what went wrong
            c.status.value = f"<b>error:</b> {type(err).__name__}: {err}"
            raise
        finally:
            self._enable(True)
        self.on_change()

    def _report(self, step: int, line: str) -> None:
        self.c.progress.value = step
        self.c.status.value = line

    def _enable(self, enabled: bool) -> None:
        self.training = not enabled
        for widget in self.c.settings + [self.c.train]:
            widget.disabled = not enabled

    def picture(self, quick: bool = False) -> tuple[bytes, str]:
        """Train the controls' settings (for at most ``QUICK_STEPS`` steps when ``quick``); the picture and what it shows
        (the status line without the seconds)."""
        c = self.c
        chosen = c.steps.value
        if quick:  # the slider goes back to the chosen value, for the reader's next Train
            c.steps.value = min(chosen, QUICK_STEPS)
        try:
            self.train(self.wanted(), self.data["seed"])
        finally:
            c.steps.value = chosen
        run = self.shown  # the caption leaves out the seconds, which differ from run to run
        untimed = result_line(run.settings, run.seed, run.parameters, run.nll, None)
        return bytes(c.plot.value), f"the playground after pressing Train with its settings: {untimed}"
