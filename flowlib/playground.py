"""The widgets of chapters 1-3: controls wired to `flowlib.fit` and `flowlib.plots`.

`playground` fits a small flow to a 2D toy density by maximum likelihood,
minimising the mean negative log-likelihood in nats,

.. math:: \\mathcal L = -\\frac1B \\sum_b \\Big[\\log p_Z(f(x_b)) + \\log\\Big|\\det \\frac{\\partial f}{\\partial x}(x_b)\\Big|\\Big],

with Adam and a cosine learning-rate decay (`flowlib.fit.fit`), then reports
the test NLL (`flowlib.fit.evaluate`) and draws data | learned density |
samples (`flowlib.plots.plot_density_and_samples`). `transform_playground`
draws chapter 1's warp, :math:`p_X(x) = p_Z(f(x))\\,|\\det \\partial f/\\partial x|`,
for slider values (`flowlib.warp.plot_warp`).

The widgets hold no logic of their own: every number and picture comes from
those functions, which the tests call directly. ipywidgets and matplotlib
are imported only when a widget is made.
"""

from __future__ import annotations

import math
from typing import Any

from .analysis import count_parameters
from .fit import evaluate, fit
from .models import toy_model
from .plots import figure_png, plot_density_and_samples
from .toy import TOY_DENSITIES, toy_splits
from .warp import plot_warp

__all__ = ["DEFAULT_LR", "PLAYGROUND_CLASSES", "playground", "transform_playground"]

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

#: The playground's learning rate for each model kind (``lr=None``). Measured
#: with the other defaults (1000 steps, 6 couplings of width 64) on all six toy
#: densities: RealNVP fits best at 3e-3; NICE at 3e-3 gets stuck on
#: ``8gaussians`` in half the seeds (one wide blob, 4.36 nats), at 1e-3 it does not (3.5-3.6).
DEFAULT_LR: dict[str, float] = {"nice": 1e-3, "realnvp": 3e-3}


def playground(
    density: str = "two_moons", kind: str = "realnvp", num_couplings: int = 6, hidden: int = 64,
    steps: int = 1000, lr: float | None = None, n_train: int = 10000, n_test: int = 5000,
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
    (``flowlib-status``), and an ``ipywidgets.Image`` of PNG bytes
    (``flowlib-plot``). The whole box has class ``flowlib-playground``; the
    names are in `PLAYGROUND_CLASSES` and the widgets in ``box.parts``.

    The picture shows the data of the chosen density until Train is pressed,
    then data | learned density | samples of the trained model. Train builds
    `~flowlib.models.toy_model` (seeded with ``seed``) and fits it with
    `~flowlib.fit.fit` (nats, cosine decay, gradients clipped at 10). While
    it trains, the controls are disabled and a density change does not touch
    the picture (it is used by the next Train). The defaults fit every toy
    density in a few seconds on a CPU. The learning rate starts at
    `DEFAULT_LR` of the model kind (unless ``lr`` is given) and follows the
    model dropdown until the slider is moved.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> box = playground("rings", num_couplings=1, hidden=4, steps=20, n_train=256, n_test=64, batch_size=64)
    >>> box.parts["train"].click()
    >>> box.parts["progress"].value, "test NLL" in box.parts["status"].value
    (20, True)
    """
    import ipywidgets as w

    if kind not in DEFAULT_LR:
        raise ValueError(f"kind must be one of {sorted(DEFAULT_LR)}, got {kind!r}")
    c = PLAYGROUND_CLASSES
    density_w = w.Dropdown(options=list(TOY_DENSITIES), value=density, description="density")
    model_w = w.Dropdown(options=list(DEFAULT_LR), value=kind, description="model")
    couplings_w = w.IntSlider(value=num_couplings, min=1, max=16, description="couplings")
    hidden_w = w.IntSlider(value=hidden, min=4, max=256, step=4, description="hidden")
    steps_w = w.IntSlider(value=steps, min=20, max=5000, step=20, description="steps")
    lr_w = w.FloatLogSlider(value=DEFAULT_LR[kind] if lr is None else lr, base=10, min=-4, max=-1,
                            step=0.1, description="lr", readout_format=".0e")
    button = w.Button(description="Train", button_style="primary", icon="play")
    progress = w.IntProgress(value=0, min=0, max=steps, description="progress")
    status = w.HTML(value="press Train")
    image = w.Image(format="png")
    parts = {"density": density_w, "model": model_w, "couplings": couplings_w, "hidden": hidden_w,
             "steps": steps_w, "lr": lr_w, "train": button, "progress": progress,
             "status": status, "plot": image}
    for key, widget in parts.items():
        widget.add_class(c[key])
    settings = [density_w, model_w, couplings_w, hidden_w, steps_w, lr_w]
    controls = settings + [button]  # disabled while training
    training = [False]

    def splits(name: str) -> tuple[Any, Any]:
        return toy_splits(name, n_train, n_test, seed=seed)

    def show_data(change: Any = None) -> None:
        if training[0]:  # the picture belongs to the run in progress
            return
        image.value = figure_png(plot_density_and_samples(None, splits(density_w.value)[0]))
        status.value = "press Train"

    def follow_kind(change: Any) -> None:
        if math.isclose(lr_w.value, DEFAULT_LR[change["old"]], rel_tol=1e-6):  # not moved by hand
            lr_w.value = DEFAULT_LR[change["new"]]

    def on_train(_: Any = None) -> None:
        name, chosen_kind, total = density_w.value, model_w.value, steps_w.value
        training[0] = True
        for widget in controls:
            widget.disabled = True
        try:
            train, test = splits(name)
            model = toy_model(chosen_kind, couplings_w.value, hidden_w.value, seed=seed)
            progress.max, progress.value = total, 0

            def report(step: int, loss: float) -> None:
                progress.value = step
                status.value = f"step {step}/{total}, train loss {loss:.3f} nats"

            fit(model, train, steps=total, batch_size=batch_size, lr=lr_w.value, clip_grad=10.0,
                schedule="cosine", unit="nats", seed=seed, callback=report)
            nll = evaluate(model, test).nats
            status.value = (f"{name}, {chosen_kind}, {count_parameters(model)} parameters: "
                            f"test NLL {nll:.3f} nats")
            image.value = figure_png(plot_density_and_samples(model, train, title=f"{name}, {chosen_kind}"))
        except Exception as err:  # keep the UI alive and say what went wrong
            status.value = f"<b>error:</b> {type(err).__name__}: {err}"
            raise
        finally:
            training[0] = False
            for widget in controls:
                widget.disabled = False

    show_data()
    density_w.observe(show_data, names="value")
    model_w.observe(follow_kind, names="value")
    button.on_click(on_train)
    box = w.VBox([w.VBox(settings + [w.HBox([button, progress]), status]), image])
    box.add_class(c["root"])
    box.parts = parts  # direct access for tests and readers
    return box


def transform_playground(**initial: float) -> Any:
    """Chapter 1's widget: sliders for `~flowlib.warp.Warp2D`'s parameters; the density and samples redraw.

    Sliders (descriptions) ``"scale x"``, ``"scale y"``, ``"bend"``,
    ``"angle"`` (degrees), ``"tails"``, started at ``initial`` (keywords
    ``scale_x``, ``scale_y``, ``bend``, ``angle_deg``, ``tails``); an
    ``ipywidgets.Image`` with class ``flowlib-plot`` drawn by
    `~flowlib.warp.plot_warp`. The box has class ``flowlib-transform-playground``.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> box = transform_playground(bend=0.4)
    >>> box.parts["bend"].value, bytes(box.parts["plot"].value[:4])
    (0.4, b'\\x89PNG')
    """
    import ipywidgets as w

    values = {"scale_x": 1.0, "scale_y": 1.0, "bend": 0.0, "angle_deg": 0.0, "tails": 0.0}
    unknown = set(initial) - set(values)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(values)}")
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
