"""`flowlib.book.readability.check_readable`: figures as the notebook shows them, texts as a reader sees them."""

from __future__ import annotations

import struct

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from IPython.core.pylabtools import print_figure
from matplotlib.text import Text

from flowlib.book.readability import COLUMN_PX, MIN_FONT_PX, check_readable, measure_readability


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def inline_png_width(fig):
    """The width of the PNG the inline backend makes of ``fig`` (IPython's own print_figure)."""
    png = print_figure(fig, "png")
    return struct.unpack(">II", png[16:24])[0]


def readable_figure():
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5), layout="constrained")
    for ax in axes:
        ax.plot([0, 1, 2], [0, 1, 4], label="data")
        ax.plot([0, 1, 2], [0, 2, 4], label="model")
        ax.set_title("a title")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend()
        ax.annotate("a point", (1, 1), (1.2, 0.5), arrowprops=dict(arrowstyle="->"))
    return fig


def wide_figure_with_tiny_legend():
    # chapter 13's latent figure as it was: 17 in wide, legends at 7 pt
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.0))
    for ax in axes:
        ax.plot([0, 1], [0, 1], ".", label="codes of test digits")
        ax.set_title("QQ plot", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def test_a_readable_figure_passes():
    fig = readable_figure()
    found = check_readable(fig)
    assert found.scale == 1.0
    kinds = {t.kind for t in found.texts}
    assert kinds == {"title", "axis label", "tick label", "legend", "annotation"}
    assert min(t.px for t in found.texts) >= MIN_FONT_PX
    assert not any(t.outside for t in found.texts)


def test_a_wide_figure_with_a_tiny_legend_fails_and_names_it():
    fig = wide_figure_with_tiny_legend()
    found = measure_readability(fig)
    assert found.scale == pytest.approx(COLUMN_PX / found.width_px)
    legend_px = [t.px for t in found.texts if t.kind == "legend"]
    assert len(legend_px) == 4 and legend_px[0] == pytest.approx(7 * 100 / 72 * found.scale)
    assert legend_px[0] < 6                                    # "legends about 5 px high"
    with pytest.raises(ValueError, match=r"legend 'codes of test digits' 5\.\d px") as err:
        check_readable(fig)
    assert f"shown at {found.scale:.2f} in a 950 px column" in str(err.value)


def test_a_clipped_title_fails():
    fig, ax = plt.subplots(figsize=(3, 2.5))
    ax.set_title("a title far too long for a figure three inches wide")
    with pytest.raises(ValueError, match=r"outside the figure or cut off: title 'a title far too long"):
        check_readable(fig)


def test_a_title_pushed_above_the_figure_fails():
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.set_title("above", y=1.3)
    with pytest.raises(ValueError, match="outside the figure"):
        check_readable(fig)
    ax.set_title("above", y=1.0)
    fig.tight_layout()
    check_readable(fig)


def test_the_width_is_the_inline_backends():
    # bbox_inches="tight" crops white space and grows the picture to texts outside the figure
    for fig in (readable_figure(), wide_figure_with_tiny_legend()):
        assert measure_readability(fig).width_px == pytest.approx(inline_png_width(fig), abs=1)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.text(1.5, 0.5, "far right of the axes", transform=ax.transAxes)
    assert measure_readability(fig).width_px == pytest.approx(inline_png_width(fig), abs=1)
    assert inline_png_width(fig) > 5 * 100


def test_scale_and_sizes_follow_the_dpi():
    fig, ax = plt.subplots(figsize=(5, 3), dpi=200)
    ax.set_title("t", fontsize=9)
    found = measure_readability(fig, column_px=10_000)
    assert found.scale == 1.0
    assert next(t.px for t in found.texts if t.kind == "title") == pytest.approx(9 * 200 / 72)


def test_the_minimum_is_a_parameter():
    fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
    ax.set_title("t", fontsize=12)                             # 16.7 px; tick labels 10 pt = 13.9 px
    check_readable(fig, min_font_px=13)
    with pytest.raises(ValueError, match="below 15 px"):
        check_readable(fig, min_font_px=15)


def test_only_drawn_texts_count():
    fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
    ax.text(0.5, 0.5, "hidden", fontsize=2).set_visible(False)
    ax.text(0.5, 0.5, "", fontsize=2)
    ax.set_xticks([-5, 0, 1, 5])
    ax.set_xlim(0, 1)                                          # ticks outside the view are not drawn
    found = check_readable(fig)
    assert [t.text for t in found.texts if t.kind == "tick label" and t.text in ("\u22125", "5")] == []
    assert "hidden" not in [t.text for t in found.texts]


def test_an_axes_off_image_grid_counts_only_its_titles():
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.3))          # chapter 10's temperature grid
    for ax, t in zip(axes, (0.5, 0.7, 0.85, 1.0)):
        ax.imshow([[0, 1], [1, 0]], cmap="gray")
        ax.set_title(f"T = {t}")
        ax.axis("off")
    fig.tight_layout()
    found = measure_readability(fig)
    assert {t.kind for t in found.texts} == {"title"}
    with pytest.raises(ValueError, match=r"4 texts below 10 px: title 'T = 0.5' 9\.9 px"):
        check_readable(fig)


def test_text_draw_is_restored():
    original = Text.draw
    fig, ax = plt.subplots(figsize=(20, 3))
    ax.set_title("x", fontsize=5)
    with pytest.raises(ValueError):
        check_readable(fig)
    assert Text.draw is original


def test_the_test_commands_kernels_check_figures_when_shown():
    # conftest.py gives every kernel the test command starts (nbval's chapters included) an IPython
    # startup file that makes plt.show() check every open figure: a chapter with an unreadable figure fails
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    draw = ('import matplotlib.pyplot as plt\n'
            'fig, ax = plt.subplots(figsize={size})\n'
            'ax.legend(handles=ax.plot([0, 1], label="a legend"), fontsize=8)\n'
            'plt.show()')
    # 8 pt at 100 dpi is 11.1 px at full size, and 6.9 px in a 19 in figure shrunk to 0.62
    readable = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(draw.format(size=(6, 3)))])
    NotebookClient(readable, kernel_name="python3", timeout=120).execute()
    unreadable = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(draw.format(size=(19, 3)))])
    with pytest.raises(CellExecutionError, match=r"shown at 0\.62 in a 950 px column: .*legend 'a legend'"):
        NotebookClient(unreadable, kernel_name="python3", timeout=120).execute()
