"""Is a figure readable at the width the notebook shows it?

A figure drawn inline is saved as a PNG by the inline backend
(``IPython.core.pylabtools.print_figure``): at the figure's ``dpi`` (the
``rcParams["figure.dpi"]`` it was made with, 100 by default) and with
``bbox_inches="tight"``, which crops it to its content (texts outside the
figure included) plus ``rcParams["savefig.pad_inches"]`` (0.1 in) on every side. The
notebook then shows that PNG no wider than its column (``max-width: 100%``),
about 950 px in the book's JupyterLab and site, so a wider PNG is shrunk by

.. math:: \\text{scale} = \\min\\Big(1, \\frac{\\text{column px}}{(w_{tight} + 2\\,\\text{pad})\\,\\text{dpi}}\\Big),

and a text of :math:`p` points is then :math:`p \\cdot \\text{dpi} / 72 \\cdot \\text{scale}`
screen pixels tall (its em size, the size a font is set in). `check_readable`
measures every text the figure draws (titles, axis and tick labels, legend
texts, annotations, plain texts) after its layout engine has run, and fails
on texts below a minimum size and on texts that stick out of the figure.

Why the minimum is 10 px: the chapters' prose is 14 px (JupyterLab's
``--jp-content-font-size1``), and 10 px is 0.7 of it, the ratio of the
smallest print a book uses (footnotes, 7 pt) to its body text (10 pt). At
10 px the lowercase letters of DejaVu Sans (x-height 0.55 em) are 5.5 pixels
tall, just above the 5 rows the smallest pixel fonts need to tell
``a e s o`` apart. Every named matplotlib size down to ``"x-small"``
(8.3 pt at ``font.size`` 10, 11.6 px at 100 dpi) passes in a figure shown
at full size; a default 10 pt tick label (13.9 px) fails once the figure is
shrunk below 0.72, that is wider than about 13.2 in at 100 dpi, and a 12 pt
title below 0.6 (15.8 in).

Why a text outside the figure fails too: inline, ``bbox_inches="tight"``
grows the picture to include it (and so shrinks everything else), while the
book's ``figures/`` PNGs saved without ``bbox_inches="tight"`` and the widgets'
static pictures (`~flowlib.book.plots.figure_png`) cut it off.

matplotlib is imported only inside the functions that measure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

__all__ = ["MIN_FONT_PX", "COLUMN_PX", "TextSize", "Readability", "measure_readability", "check_readable",
           "check_figures_when_shown"]

#: The narrowest text, in screen pixels, that `check_readable` accepts (see the module docstring).
MIN_FONT_PX = 10.0
#: The width of the notebook's output column, in screen pixels.
COLUMN_PX = 950


class TextSize(NamedTuple):
    """One drawn text: what it is, what it says, its size on screen, and whether it sticks out."""

    kind: str          # "title", "axis label", "tick label", "legend", "annotation" or "text"
    text: str
    px: float          # em size in screen pixels after the notebook's shrinking
    outside: bool      # partly outside the figure (or cut by its clip box)

    def __str__(self) -> str:
        shown = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return f"{self.kind} {shown!r} {math.floor(self.px * 10) / 10:.1f} px"   # rounded down: 9.96 is not 10


class Readability(NamedTuple):
    """What `measure_readability` found: the width shown inline, the scale, every drawn text."""

    width_px: float    # width of the inline PNG (bbox_inches="tight"), before the notebook shrinks it
    scale: float       # min(1, column_px / width_px)
    texts: tuple[TextSize, ...]


@contextmanager
def _recording_texts(drawn: list["Text"]) -> Iterator[None]:
    """While active, every `Text` that draws itself (visible, not empty) is appended to ``drawn``.

    Only the texts actually drawn count: tick labels of ticks outside the view
    limits exist as artists but are never drawn.
    """
    from matplotlib.text import Text

    original = Text.draw

    def draw(self: Text, renderer: object) -> None:
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)

    Text.draw = draw  # type: ignore[method-assign]
    try:
        yield
    finally:
        Text.draw = original  # type: ignore[method-assign]


def _kinds(fig: "Figure") -> dict[int, str]:
    """``id(text) -> kind`` for the texts whose role the figure's axes and legends know."""
    kinds: dict[int, str] = {}
    legends = list(fig.legends)
    for ax in fig.axes:
        for t in (ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None)):
            kinds[id(t)] = "title"
        kinds[id(ax.xaxis.label)] = kinds[id(ax.yaxis.label)] = "axis label"
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                kinds[id(tick.label1)] = kinds[id(tick.label2)] = "tick label"
        legends += [ax.get_legend()] if ax.get_legend() is not None else []
    for legend in legends:
        for t in [*legend.get_texts(), legend.get_title()]:
            kinds[id(t)] = "legend"
    for name in ("_suptitle", "_supxlabel", "_supylabel"):
        kinds[id(getattr(fig, name, None))] = "title"
    return kinds


def _outside(t: "Text", renderer: object, fig: "Figure") -> bool:
    """Whether ``t`` sticks out of the figure, or out of the clip box that cuts it, by more than a pixel."""
    box = t.get_window_extent(renderer)
    frames = [fig.bbox]
    if t.get_clip_on() and t.get_clip_box() is not None:
        frames.append(t.get_clip_box())
    return any(box.x0 < f.x0 - 1 or box.y0 < f.y0 - 1 or box.x1 > f.x1 + 1 or box.y1 > f.y1 + 1 for f in frames)


def measure_readability(fig: "Figure", column_px: float = COLUMN_PX) -> Readability:
    """Draw ``fig`` as the inline backend does and measure every text it draws.

    The figure's layout engine (``tight_layout``, constrained layout) runs as in
    the notebook. ``fig`` is drawn once off screen; nothing else changes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots(figsize=(19, 3))
    >>> _ = ax.set_title("wide")
    >>> r = measure_readability(fig)
    >>> round(r.width_px), round(r.scale, 2)     # 19 in at 100 dpi, cropped to its content
    (1535, 0.62)
    >>> [str(t) for t in r.texts if t.kind == "title"]   # 12 pt = 16.7 px, shrunk to 0.62
    ["title 'wide' 10.3 px"]
    """
    import matplotlib
    from matplotlib.backends.backend_agg import RendererAgg

    renderer = RendererAgg(fig.bbox.width, fig.bbox.height, fig.dpi)
    drawn: list[Text] = []
    with _recording_texts(drawn):
        fig.draw(renderer)
    pad_inches = matplotlib.rcParams["savefig.pad_inches"]     # "layout" (no pad of its own) counts as 0
    pad = pad_inches if isinstance(pad_inches, (int, float)) else 0.0
    width_px = float((fig.get_tightbbox(renderer).width + 2 * pad) * fig.dpi)
    scale = min(1.0, column_px / width_px)
    kinds = _kinds(fig)
    texts = tuple(TextSize(kinds.get(id(t), "annotation" if hasattr(t, "xyann") else "text"), t.get_text(),
                           float(t.get_fontsize() * fig.dpi / 72 * scale), _outside(t, renderer, fig)) for t in drawn)
    return Readability(width_px, scale, texts)


def _listed(texts: list[TextSize], limit: int = 8) -> str:
    more = f", and {len(texts) - limit} more" if len(texts) > limit else ""
    return "; ".join(str(t) for t in texts[:limit]) + more


def check_readable(fig: "Figure", column_px: float = COLUMN_PX, min_font_px: float = MIN_FONT_PX) -> Readability:
    """`measure_readability`, raising a ValueError when a text is too small or sticks out of the figure.

    The error names the offending texts with their size on screen, the
    figure's inline width and the scale, so the fix (a narrower ``figsize``,
    a larger ``fontsize``, a layout engine) can be read off it. Returns the
    measurement when the figure passes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
    >>> _ = ax.set_title("readable")
    >>> check_readable(fig).scale
    1.0
    >>> fig, ax = plt.subplots(figsize=(19, 3))
    >>> _ = ax.legend(handles=ax.plot([0, 1], label="tiny"), fontsize=7)
    >>> check_readable(fig)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: figure 1524 px wide inline (19.0 x 3.0 in at 100 dpi), shown at 0.62 in a 950 px column: 13 texts below 10 px: legend 'tiny' 6.0 px; tick label '0.0' 8.6 px; ...
    """
    found = measure_readability(fig, column_px)
    small = sorted((t for t in found.texts if t.px < min_font_px), key=lambda t: t.px)
    outside = [t for t in found.texts if t.outside]
    if not small and not outside:
        return found
    w, h = fig.get_size_inches()
    problems = []
    if small:
        problems.append(f"{len(small)} texts below {min_font_px:g} px: {_listed(small)}")
    if outside:
        problems.append(f"{len(outside)} texts outside the figure or cut off: {_listed(outside)}")
    raise ValueError(f"figure {found.width_px:.0f} px wide inline ({w:.1f} x {h:.1f} in at {fig.dpi:.0f} dpi), "
                     f"shown at {found.scale:.2f} in a {column_px:.0f} px column: " + " | ".join(problems)
                     + " (fix: a figsize at most column_px / dpi wide, larger fontsize, or a layout engine)")


def check_figures_when_shown() -> None:
    """Make ``plt.show()`` run `check_readable` on every open figure before it shows them.

    The test command installs this in every chapter's kernel (an IPython
    startup file, ``conftest.py``), so a chapter whose figure would be
    unreadable at the notebook's width fails with the `check_readable` error
    in the cell that draws it. Every drawing cell of the chapters ends in
    ``plt.show()``. A figure that fails is closed with the others, so the
    next cell is checked on its own figures. Installing it twice wraps
    ``plt.show`` once.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> check_figures_when_shown()
    >>> fig, ax = plt.subplots(figsize=(19, 3))
    >>> _ = ax.legend(handles=ax.plot([0, 1], label="tiny"), fontsize=7)
    >>> plt.show()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: figure 1524 px wide inline (19.0 x 3.0 in at 100 dpi), shown at 0.62 in a 950 px column: ...
    >>> plt.get_fignums()
    []
    >>> plt.show = plt.show.__wrapped__   # this process's plt.show as it was
    """
    import functools

    import matplotlib.pyplot as plt

    show = plt.show
    if getattr(show, "checks_readability", False):
        return

    @functools.wraps(show)
    def checked_show(*args: object, **kwargs: object) -> object:
        try:
            for number in plt.get_fignums():
                check_readable(plt.figure(number))
        except ValueError:
            plt.close("all")    # the cells after this one are checked on their own figures
            raise
        return show(*args, **kwargs)

    checked_show.checks_readability = True  # type: ignore[attr-defined]
    plt.show = checked_show
