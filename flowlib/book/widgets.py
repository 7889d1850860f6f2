"""Widgets on a page: chapter 1's warp widget, and `show`, which every chapter uses to display a widget.

`transform_playground` draws chapter 1's warp,
:math:`p_X(x) = p_Z(f(x))\\,|\\det \\partial f/\\partial x|`, for slider values
(`flowlib.book.warp.plot_warp`).

`show` is how a chapter shows a widget: each of its outputs carries the live
widget and, for front ends that cannot run it (a stored notebook on GitHub,
through nbconvert, or opened but not yet run in JupyterLab), a picture of
what the widget shows, made by the widget's own code (for the playground of
`flowlib.book.playground`: after pressing Train with its settings), and a caption.
"""

from __future__ import annotations

from typing import Any

from .chapter import quick_mode
from .playground import PLAYGROUND_CLASSES, QUICK_STEPS
from .plots import figure_png
from .warp import plot_warp

__all__ = ["WIDGET_VIEW", "show", "transform_playground"]


def transform_playground(**initial: float) -> Any:
    """Chapter 1's widget: sliders for `~flowlib.book.warp.Warp2D`'s parameters; the density and samples redraw.

    Sliders (descriptions) ``"scale x"``, ``"scale y"``, ``"bend"``,
    ``"angle"`` (degrees), ``"tails"``, started at ``initial`` (keywords
    ``scale_x``, ``scale_y``, ``bend``, ``angle_deg``, ``tails``); an
    ``ipywidgets.Image`` with class ``flowlib-plot`` drawn by
    `~flowlib.book.warp.plot_warp`. The box has class ``flowlib-transform-playground``.

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

    def picture(quick: bool = False) -> tuple[bytes, str]:
        """The picture at the sliders' values and what it shows."""
        chosen = ", ".join(f"{s.description} {s.value:g}" for s in sliders.values())
        return bytes(image.value), f"the widget with its sliders at {chosen}"

    box.picture = picture
    return box


#: The mime type of a widget's view in a cell's output (ipywidgets 8).
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def show(widget: Any) -> None:
    """Display a widget of this module so that every reader sees something: the live widget, or its picture.

    Two outputs, each a live widget with a fallback in the same mime bundle:

    1. ``widget`` with, as ``image/png``, the picture it shows once
       ``widget.picture(quick_mode())`` has run (`playground` and
       `transform_playground` give their widgets that method; for the
       playground it trains, so the widget opens on the result of a
       training with its settings, shortened to `QUICK_STEPS` steps in quick
       mode, `flowlib.book.chapter.quick_mode`). The widget is displayed
       before ``picture`` runs, with the picture it shows then, so a reader
       watches the playground's training from its first step; when the
       picture has changed, the output is updated to the new one
       (``update_display``, which JupyterLab and nbclient apply to the
       stored output);
    2. an empty, hidden widget with, as ``text/markdown``, a caption saying
       what the picture shows and how to get the widget.

    A front end shows one mime type per output. JupyterLab, running the cell,
    shows the widgets (the hidden one takes no room); a notebook stored
    without widget state, opened in JupyterLab (whose widget renderer is not
    used for untrusted outputs), on GitHub or through nbconvert shows the
    picture and the caption. Returns nothing, so a cell ending in
    ``show(...)`` shows only these two outputs.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> show(transform_playground(bend=0.4))  # outside IPython display() prints each bundle  # doctest: +ELLIPSIS
    {'application/vnd.jupyter.widget-view+json': {...}, 'image/png': 'iVBORw0KGgo...', 'text/plain': '[picture of the widget]'}
    {'application/vnd.jupyter.widget-view+json': {...}, 'text/markdown': '*Picture of the widget with its sliders at ...', ...}
    """
    import uuid

    import ipywidgets as w
    from IPython.display import display, update_display

    quick = quick_mode()
    view = widget._repr_mimebundle_()[WIDGET_VIEW]
    before = bytes(widget.parts["plot"].value)
    display_id = uuid.uuid4().hex
    display(_with_picture(view, before), raw=True, display_id=display_id)
    png, what = widget.picture(quick)
    if png != before:
        update_display(_with_picture(view, png), raw=True, display_id=display_id)
    if quick and "steps" in widget.parts:
        what += f" (quick mode: {QUICK_STEPS} steps)"
    caption = f"Picture of {what}. Run this cell in JupyterLab to use the widget."
    hidden = w.HTML(layout=w.Layout(display="none"))
    display({WIDGET_VIEW: hidden._repr_mimebundle_()[WIDGET_VIEW],
             "text/markdown": f"*{caption}*", "text/plain": caption}, raw=True)


def _with_picture(view: dict, png: bytes) -> dict:
    """A mime bundle: the widget ``view`` and, for front ends without widgets, ``png``."""
    import base64

    return {WIDGET_VIEW: view, "image/png": base64.b64encode(png).decode("ascii"), "text/plain": "[picture of the widget]"}
