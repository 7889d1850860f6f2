"""Diagrams of the layers and architectures the chapters teach, drawn from flowlib's own objects.

One function per chapter, each returning a matplotlib ``Figure`` drawn with
boxes, arrows and mathtext labels, in the book's notation (chapters 2 and 3:
a layer maps :math:`x = (x_{I_1}, x_{I_2})` to :math:`h`, and a flow maps data
to latent, :math:`z = f(x)`). Every fact a picture states is read from the
implementation, so the pictures cannot drift from the code:

* `coupling_diagram` (chapters 2 and 3) takes a `~flowlib.coupling.Coupling`
  and reads which entries condition (its mask), whether it is additive
  (:math:`h_{I_2} = x_{I_2} + m(x_{I_1})`) or affine
  (:math:`h_{I_2} = x_{I_2} \\odot \\exp(s(x_{I_1})) + t(x_{I_1})`), and whether
  its net sees :math:`x_{I_1}` alone or :math:`b \\odot x`;
* `masking_diagram` (chapter 5) draws the masks `flowlib.masks` returns, the
  index maps of `flowlib.permutations` and the matrix :math:`W` of an
  `~flowlib.conv1x1.InvertibleConv1x1`;
* `squeeze_diagram` (chapter 6) runs `flowlib.reshape.squeeze` on a labelled
  image and draws where every pixel lands,
  :math:`\\mathrm{squeeze}(x)_{4c+2i+j,h,w} = x_{c,2h+i,2w+j}`;
* `multiscale_diagram` (chapter 7) walks a `~flowlib.multiscale.MultiScale`
  model, runs a dummy tensor through it and draws each scale's layers, the
  shapes it produces and the part it factors out,
  :math:`(z_l, h^{(l)}) = f_l(h^{(l-1)})`;
* `made_diagram` (chapter 12) draws a `~flowlib.autoregressive.MADE`'s units
  with their degrees and every connection its masks keep, so that output
  :math:`d` visibly reaches only the inputs before :math:`d` in the order.

The figures are at most 9.5 in wide with no text below 9 pt, so that at the
inline 100 dpi they fit the notebook's 950 px column unshrunk
(`~flowlib.book.readability.check_readable` passes). Each draws on one
axes that fills the figure with 1 data unit = 1 inch (`_canvas`), or on
axes placed in inches, so sizes are chosen, not left to a layout engine.

matplotlib is imported only inside the functions that draw.
"""

from __future__ import annotations

import itertools
import textwrap
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..autoregressive import MADE, made_degrees
from ..conv1x1 import InvertibleConv1x1
from ..coupling import AdditiveCoupling, AffineCoupling, Coupling
from ..flow import Sequential
from ..flow_model import FlowModel
from ..masks import alternating_mask, channel_mask, checkerboard_mask, half_mask, is_channelwise
from ..multiscale import MultiScale
from ..permutations import Permutation, RandomPermutation, ReversePermutation
from ..reshape import Squeeze, squeeze

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["COND_COLOR", "TRANS_COLOR", "coupling_diagram", "masking_diagram", "squeeze_diagram",
           "multiscale_diagram", "made_diagram"]

#: Fill of the conditioning part :math:`x_{I_1}` (mask ``True``) in every diagram.
COND_COLOR = "#9ec5e8"
#: Fill of the transformed part :math:`x_{I_2}` (mask ``False``) in every diagram.
TRANS_COLOR = "#f6c28b"
_NET_COLOR = "#e4e4e4"
_QUADRANT_COLORS = ("#9ec5e8", "#f6c28b", "#b6dfa8", "#d9b8e6")   # pixel (i, j) of a 2x2 block, by 2i + j


# ----------------------------------------------------------------------------- drawing kit


def _canvas(width: float, height: float) -> tuple["Figure", "Axes"]:
    """A figure of ``width x height`` inches and one axes over all of it, 1 data unit = 1 inch."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def _inch_axes(fig: "Figure", left: float, bottom: float, width: float, height: float, gid: str) -> "Axes":
    """Axes placed in inches from the figure's lower left corner, without ticks; ``gid`` names it for tests."""
    fw, fh = fig.get_size_inches()
    ax = fig.add_axes((left / fw, bottom / fh, width / fw, height / fh))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_gid(gid)
    return ax


def _box(ax: "Axes", x: float, y: float, w: float, h: float, text: str, color: str = "white",
         fontsize: float = 10, gid: str | None = None) -> Any:
    """A rounded box with lower left ``(x, y)`` and centred text; returns the text."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.08", fc=color, ec="0.25", lw=1))
    return ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, gid=gid)


def _arrow(ax: "Axes", start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color="0.2", lw=1.3,
                                                          shrinkA=0, shrinkB=0, mutation_scale=14))


def _node(ax: "Axes", x: float, y: float, symbol: str) -> None:
    """A circle holding an operator (``+``, ``\\odot``) on a data path."""
    from matplotlib.patches import Circle

    ax.add_patch(Circle((x, y), 0.17, fc="white", ec="0.25", lw=1.2))
    ax.text(x, y, symbol, ha="center", va="center", fontsize=12)


# ----------------------------------------------------------------------------- chapters 2 and 3: a coupling layer


def _index_list(idx: Tensor, total: int) -> str:
    """``"0, 2, 4"``, or ``"0, 2, 4, ..., 782 (392 of 784)"`` when long."""
    values = [str(v) for v in idx.tolist()]
    if len(values) <= 5:
        return ", ".join(values)
    return f"{', '.join(values[:3])}, ..., {values[-1]} ({len(values)} of {total})"


def _mask_parts(mask: Tensor) -> tuple[str, str]:
    """What a coupling's mask puts in :math:`I_1` (``True``) and in :math:`I_2`, in words."""
    if mask.dim() == 1:
        return (f"coordinates {_index_list(torch.nonzero(mask).flatten(), mask.numel())}",
                f"coordinates {_index_list(torch.nonzero(~mask).flatten(), mask.numel())}")
    if is_channelwise(mask):
        split = mask[:, 0, 0]
        return (f"channels {_index_list(torch.nonzero(split).flatten(), len(split))}",
                f"channels {_index_list(torch.nonzero(~split).flatten(), len(split))}")
    c, h, w = mask.shape
    for parity, name in ((0, "even"), (1, "odd")):
        if torch.equal(mask, checkerboard_mask(c, h, w, parity)):
            other = "odd" if parity == 0 else "even"
            return f"pixels with i + j {name}", f"pixels with i + j {other}"
    return f"{int(mask.sum())} entries with b = 1", f"{int((~mask).sum())} entries with b = 0"


def _coupling_texts(layer: Coupling) -> dict[str, str]:
    """The formula-bearing labels of `coupling_diagram`, read from the layer's class and mask."""
    affine = isinstance(layer, AffineCoupling)
    net_in = r"only $x_{I_1}$" if layer.by_index else r"$b \odot x$ ($b$: the mask)"
    if affine:
        formula = (r"$h_{I_2} = x_{I_2} \odot \exp(s(x_{I_1})) + t(x_{I_1})$,   "
                   r"$\log|\det \partial h / \partial x| = \sum_j s_j(x_{I_1})$")
        net = f"$s, t$ = {type(layer.net).__name__}\n" + r"$s = a \tanh(\tilde s)$"
    else:
        formula = r"$h_{I_2} = x_{I_2} + m(x_{I_1})$,   $\log|\det \partial h / \partial x| = 0$"
        net = f"$m$ = {type(layer.net).__name__}"
    return {"formula": formula, "net": net, "net_in": f"net sees {net_in}",
            "title": f"{type(layer).__name__}: one layer of $z = f(x)$, data to latent"}


def _net_and_operators(ax: "Axes", net: str, affine: bool) -> None:
    """The net box and what its outputs do to :math:`x_{I_2}` on the lower path: ``+ m``, or ``odot exp(s)`` then ``+ t``."""
    _box(ax, 3.7, 1.42, 2.6, 0.48, net, _NET_COLOR, fontsize=9 if affine else 10)
    ops = [(4.1, r"\odot", r"$\exp(s)$"), (5.9, "+", "$t$")] if affine else [(5.0, "+", r"$m(x_{I_1})$")]
    for x, symbol, feed in ops:
        _arrow(ax, (x, 1.42), (x, 1.22))
        _node(ax, x, 1.05, f"${symbol}$")
        ax.text(x + 0.22, 1.3, feed, va="center", fontsize=9)
    _arrow(ax, (2.2, 1.05), (7.3, 1.05))


def coupling_diagram(layer: Coupling) -> "Figure":
    """What a coupling layer computes, read from ``layer``: its split, its net, its formula.

    Additive (NICE, chapter 2): :math:`h_{I_1} = x_{I_1},\\; h_{I_2} = x_{I_2} + m(x_{I_1})`;
    affine (RealNVP, chapter 3): :math:`h_{I_2} = x_{I_2} \\odot \\exp(s(x_{I_1})) + t(x_{I_1})`
    with flowlib's bounded scale :math:`s = a \\tanh(\\tilde s)`. The boxes
    :math:`x_{I_1}`, :math:`x_{I_2}` list the entries of ``layer.mask`` (``True``
    conditions), the net box names ``layer.net``'s class and says whether it
    sees :math:`x_{I_1}` alone (vector and channel masks) or :math:`b \\odot x`
    (checkerboard), and the caption gives the log-determinant.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> from flowlib import AffineCoupling, MLP, alternating_mask
    >>> fig = coupling_diagram(AffineCoupling(alternating_mask(6), MLP(3, 6)))
    >>> len(fig.axes), [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "x_I1"]
    (1, ['$x_{I_1}$\\ncoordinates 0, 2, 4'])
    """
    if not isinstance(layer, (AdditiveCoupling, AffineCoupling)):
        raise TypeError(f"coupling_diagram draws an AdditiveCoupling or AffineCoupling, got {type(layer).__name__}")
    labels, (part1, part2) = _coupling_texts(layer), _mask_parts(layer.mask.cpu())
    fig, ax = _canvas(9.0, 3.5)
    ax.text(4.5, 3.25, labels["title"], ha="center", va="center", fontsize=11)
    _box(ax, 0.2, 2.05, 2.0, 0.7, "$x_{I_1}$\n" + part1, COND_COLOR, gid="x_I1")
    _box(ax, 0.2, 0.7, 2.0, 0.7, "$x_{I_2}$\n" + part2, TRANS_COLOR, gid="x_I2")
    _box(ax, 7.3, 2.05, 1.5, 0.7, "$h_{I_1}$", COND_COLOR, fontsize=11)
    _box(ax, 7.3, 0.7, 1.5, 0.7, "$h_{I_2}$", TRANS_COLOR, fontsize=11)
    _arrow(ax, (2.2, 2.4), (7.3, 2.4))
    ax.text(3.0, 2.5, r"copied: $h_{I_1} = x_{I_1}$", va="bottom", fontsize=10)
    ax.plot([5.0], [2.4], "o", color="0.2", ms=5)
    _arrow(ax, (5.0, 2.4), (5.0, 1.9))
    ax.text(5.08, 2.12, labels["net_in"], va="center", fontsize=9)
    _net_and_operators(ax, labels["net"], isinstance(layer, AffineCoupling))
    ax.text(4.5, 0.3, labels["formula"], ha="center", va="center", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- chapter 5: masks, permutations, 1x1 conv


def _mask_panel(fig: "Figure", mask: Tensor, where: tuple[float, float], cell: float, gid: str,
                title: str) -> "Axes":
    """``mask`` (1-D, or 2-D ``(H, W)``) drawn cell by cell: `COND_COLOR` where True, `TRANS_COLOR` where False."""
    from matplotlib.colors import ListedColormap

    grid = mask.reshape(1, -1) if mask.dim() == 1 else mask
    rows, cols = grid.shape
    ax = _inch_axes(fig, where[0], where[1], cols * cell, rows * cell, gid)
    ax.imshow(grid.int().numpy(), cmap=ListedColormap([TRANS_COLOR, COND_COLOR]), vmin=0, vmax=1)
    ax.set_xticks([x - 0.5 for x in range(1, cols)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, rows)], minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="both", length=0)
    ax.set_title(title, fontsize=9, pad=3)
    return ax


def _masks_rows(fig: "Figure", dim: int, size: int, channels: int) -> None:
    """Vector masks in one row (top), image masks in the next, each centred in a 2.3 in slot."""
    vector = [(f"alternating_mask({dim}, {p})", alternating_mask(dim, p)) for p in (0, 1)]
    vector += [(f"half_mask({dim}, {p})", half_mask(dim, p)) for p in (0, 1)]
    cell = min(0.3, 1.8 / dim)
    for k, (name, mask) in enumerate(vector):
        _mask_panel(fig, mask, (0.3 + 2.3 * k + (2.1 - cell * dim) / 2, 4.55), cell, name, name)
    cell = min(0.28, 1.12 / size)
    for k in (0, 1):
        name = f"checkerboard_mask(1, {size}, {size}, {k})"
        left = 0.3 + 2.3 * k + (2.1 - cell * size) / 2
        _mask_panel(fig, checkerboard_mask(1, size, size, k)[0], (left, 2.85), cell, name, name)
    mask, (fw, fh) = channel_mask(channels, 2, 2, 0), fig.get_size_inches()
    fig.text(4.9 / fw, 3.95 / fh, f"channel_mask({channels}, 2, 2, 0), one panel per channel", fontsize=9)
    for c in range(channels):
        _mask_panel(fig, mask[c], (4.9 + 0.8 * c, 3.0), 0.28, f"channel_mask({channels}, 2, 2, 0)[{c}]",
                    f"c = {c}")


def _permutation_panel(fig: "Figure", perm: Permutation, left: float, title: str) -> "Axes":
    """Lines from :math:`x_{\\pi(i)}` (top) to :math:`z_i` (bottom): ``z[:, i] = x[:, perm[i]]``."""
    n = perm.num_features
    ax = _inch_axes(fig, left, 0.4, 2.5, 1.15, f"{type(perm).__name__}({n})")
    for i, src in enumerate(perm.perm.tolist()):
        ax.plot([src, i], [1, 0], color="0.3", lw=1.2, marker="o", ms=4)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(-0.25, 1.25)
    ax.set_yticks([0, 1], ["$z$", "$x$"], fontsize=10)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=9)
    ax.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=9)
    return ax


def _conv_panel(fig: "Figure", conv: InvertibleConv1x1, left: float) -> "Axes":
    """The matrix :math:`W` of a 1x1 convolution, numbers written in its cells."""
    w = conv.weight().detach().cpu()
    n = w.shape[0]
    cell = min(0.33, 1.32 / n)
    ax = _inch_axes(fig, left, 0.3, cell * n, cell * n, f"InvertibleConv1x1({n})")
    ax.imshow(w.numpy(), cmap="coolwarm", vmin=-1, vmax=1)
    for (i, j), v in zip(itertools.product(range(n), range(n)), w.flatten().tolist()):
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=9)
    ax.set_title(f"InvertibleConv1x1({n}): $W$,\n" + r"$z_{:,h,w} = W\,x_{:,h,w}$ at every pixel", fontsize=9)
    return ax


def masking_diagram(dim: int = 6, size: int = 4, channels: int = 4, seed: int = 0) -> "Figure":
    """The masks of `flowlib.masks`, the permutations of `flowlib.permutations` and a 1x1 convolution's :math:`W`.

    Top: ``alternating_mask`` and ``half_mask`` on ``dim`` coordinates, both
    parities; middle: ``checkerboard_mask`` on a ``size x size`` image and
    ``channel_mask`` on ``channels`` channels, drawn per channel. Every cell is
    `COND_COLOR` where the mask is ``True`` (:math:`x_1`, conditions) and
    `TRANS_COLOR` where it is ``False`` (:math:`x_2`, transformed), the split
    :math:`y_1 = x_1,\\; y_2 = x_2 \\odot \\exp(s(x_1)) + t(x_1)`. Bottom: what
    runs between couplings, ``ReversePermutation(dim)`` and
    ``RandomPermutation(dim, seed)`` as lines from :math:`x_{\\pi(i)}` to
    :math:`z_i`, and the matrix :math:`W` of ``InvertibleConv1x1(channels, seed)``
    at its random-rotation start, the learned generalisation of a permutation.
    Each panel's ``gid`` is the call that made what it draws.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = masking_diagram()
    >>> ax = next(a for a in fig.axes if a.get_gid() == "alternating_mask(6, 0)")
    >>> ax.images[0].get_array().tolist()
    [[1, 0, 1, 0, 1, 0]]
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=(9.4, 5.7))
    _masks_rows(fig, dim, size, channels)
    fig.legend(handles=[Patch(fc=COND_COLOR, ec="0.3", label=r"True: conditions ($x_1$, passed on)"),
                        Patch(fc=TRANS_COLOR, ec="0.3", label=r"False: transformed ($x_2$)")],
               loc="upper center", ncols=2, fontsize=10, frameon=False, bbox_to_anchor=(0.5, 1.0))
    _permutation_panel(fig, ReversePermutation(dim), 0.3, f"ReversePermutation({dim}):\n" + r"$z_i = x_{D-1-i}$")
    _permutation_panel(fig, RandomPermutation(dim, seed), 3.3,
                       f"RandomPermutation({dim}, seed={seed}):\n" + r"$z_i = x_{\pi(i)}$")
    _conv_panel(fig, InvertibleConv1x1(channels, seed), 6.9)
    fig.text(0.3 / 9.4, 2.4 / 5.7, "between couplings: permute the coordinates (channels of an image), "
             "or mix them with a learned $W$", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- chapter 6: the squeeze


def _labelled_grid(ax: "Axes", values: Tensor, colors: Tensor) -> None:
    """Cells coloured by ``colors`` (0..3, a 2x2 block position) with ``values`` written in them."""
    from matplotlib.colors import ListedColormap

    ax.imshow(colors.numpy(), cmap=ListedColormap(_QUADRANT_COLORS), vmin=0, vmax=3)
    rows, cols = values.shape
    for r, c in itertools.product(range(rows), range(cols)):
        ax.text(c, r, str(int(values[r, c])), ha="center", va="center", fontsize=11)
    ax.set_xticks([x - 0.5 for x in range(1, cols)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, rows)], minor=True)
    ax.grid(which="minor", color="white", lw=2)
    ax.tick_params(which="both", length=0)


def squeeze_diagram(height: int = 4, width: int = 4) -> "Figure":
    """Where `flowlib.reshape.squeeze` puts every pixel of a labelled ``1 x height x width`` image.

    :math:`\\mathrm{squeeze}(x)_{4c+2i+j,\\,h,\\,w} = x_{c,\\,2h+i,\\,2w+j}`,
    :math:`(C, H, W) \\to (4C, H/2, W/2)`. The input holds the numbers
    ``0 .. H W - 1`` in reading order, coloured by the position :math:`(i, j)`
    of the pixel in its 2x2 block; the four output channels are what
    ``squeeze`` returns for it, each number drawn where it landed (in its
    input colour). Axes ``gid``: ``"squeeze-in"``, ``"squeeze-out-0"`` ...

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = squeeze_diagram()
    >>> out = next(a for a in fig.axes if a.get_gid() == "squeeze-out-1")
    >>> sorted((int(t.get_position()[1]), int(t.get_position()[0]), t.get_text()) for t in out.texts)
    [(0, 0, '1'), (0, 1, '3'), (1, 0, '9'), (1, 1, '11')]
    """
    x = torch.arange(height * width).reshape(1, 1, height, width)
    z = squeeze(x)[0]                                            # what flowlib computes
    quadrant = 2 * (torch.arange(height)[:, None] % 2) + torch.arange(width)[None, :] % 2
    cell = min(0.5, 2.4 / max(height, width))
    out_w = cell * width / 2
    fig, ax = _canvas(1.6 + cell * width + 4 * out_w + 3 * 0.3 + 0.3, cell * height + 1.0)
    inp = _inch_axes(fig, 0.3, 0.5, cell * width, cell * height, "squeeze-in")
    _labelled_grid(inp, x[0, 0], quadrant)
    inp.set_title(f"$x$: (1, {height}, {width})", fontsize=10)
    left = 0.3 + cell * width + 1.3
    _arrow(ax, (left - 1.15, 0.5 + cell * height / 2), (left - 0.15, 0.5 + cell * height / 2))
    ax.text(left - 0.65, 0.6 + cell * height / 2, "squeeze", ha="center", va="bottom", fontsize=10)
    for c in range(4):
        out = _inch_axes(fig, left + c * (out_w + 0.3), 0.5 + cell * height / 4, out_w, cell * height / 2,
                         f"squeeze-out-{c}")
        _labelled_grid(out, z[c], quadrant.flatten()[z[c]])
        out.set_title(f"channel {c}\n$(i, j) = ({c // 2}, {c % 2})$", fontsize=9)
    ax.text(left + 2 * out_w + 0.45, 0.2, r"$\mathrm{squeeze}(x)_{4c+2i+j,\,h,\,w} = x_{c,\,2h+i,\,2w+j}$"
            f":   (1, {height}, {width})  to  (4, {height // 2}, {width // 2})", ha="center", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- chapter 7: multi-scale


def _describe(layer: nn.Module) -> str:
    """A layer in a few words: ``"affine coupling (checkerboard)"``, ``"squeeze"``, a step's parts."""
    if isinstance(layer, Coupling):
        kind = "affine" if isinstance(layer, AffineCoupling) else "additive"
        split = "vector" if layer.mask.dim() == 1 else "channel" if layer.by_index else "checkerboard"
        return f"{kind} coupling ({split})"
    if isinstance(layer, Squeeze):
        return "squeeze"
    if isinstance(layer, Sequential):
        return "[" + ", ".join(_describe(child) for child in layer) + "]"
    return {"InvertibleConv1x1": "1x1 conv"}.get(type(layer).__name__, type(layer).__name__)


def _stage_lines(stage: nn.Module) -> list[str]:
    """A stage's layers in order, runs of equal layers counted: ``["3 x affine coupling (checkerboard)", ...]``."""
    layers = list(stage) if isinstance(stage, Sequential) else [stage]
    runs = [(name, len(list(group))) for name, group in itertools.groupby(map(_describe, layers))]
    lines = [name if n == 1 else f"{n} \u00d7 {name}" for name, n in runs]
    return [wrapped for line in lines for wrapped in textwrap.wrap(line, 62)]


@torch.no_grad()
def _stage_shapes(ms: MultiScale) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(input shape, output shape)`` of every level and the final flow, from a dummy example run through ``ms``.

    Runs in eval mode (no running statistics move) and restores each module's mode.
    """
    stages = [*ms.levels, ms.final]
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    hooks = [s.register_forward_hook(lambda _, inp, out: seen.append((tuple(inp[0].shape[1:]),
                                                                        tuple(out[0].shape[1:]))))
             for s in stages]
    modes = [(m, m.training) for m in ms.modules()]
    like = next(ms.parameters(), torch.empty(0))
    ms.eval()
    try:
        ms(torch.zeros(1, *ms.input_shape, dtype=like.dtype, device=like.device))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return seen


def _preprocessing(model: FlowModel | MultiScale, ms: MultiScale) -> list[str]:
    """Names of the layers a model's flow runs before its `MultiScale` (dequantization, logit)."""
    flow = model.flow if isinstance(model, FlowModel) else model
    if not isinstance(flow, Sequential):
        return []
    names = []
    for layer in flow:
        if any(m is ms for m in layer.modules()):
            break
        names.append(type(layer).__name__)
    return names


def _shape(s: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, s)) + ")"


def _scale_row(ax: "Axes", y: float, k: int, lines: list[str], shapes: tuple[tuple[int, ...], tuple[int, ...]],
               latent: tuple[int, ...], last: bool) -> float:
    """One scale's box (top at ``y``), the arrow to its latent piece, and that piece; returns the box's bottom."""
    h = 0.3 + 0.2 * (len(lines) + 1)
    head = f"scale {k + 1}: {_shape(shapes[0])} to {_shape(shapes[1])}"
    _box(ax, 0.3, y - h, 5.2, h, head + "\n" + "\n".join(lines), _NET_COLOR, fontsize=9)
    _arrow(ax, (5.5, y - h / 2), (6.3, y - h / 2))
    ax.text(5.9, y - h / 2 + 0.06, "output" if last else "factor out", ha="center", va="bottom", fontsize=9)
    _box(ax, 6.3, y - h / 2 - 0.25, 2.1, 0.5, f"$z_{{{k + 1}}}$: {_shape(latent)}", COND_COLOR, gid=f"latent-{k}")
    return y - h


def multiscale_diagram(model: FlowModel | MultiScale) -> "Figure":
    """The stages of a multi-scale flow, with the shapes a dummy example takes through them.

    RealNVP's architecture (section 3.6): :math:`h^{(0)} = x`,
    :math:`(z_l, h^{(l)}) = f_l(h^{(l-1)})` for :math:`l < L`, :math:`z_L = f_L(h^{(L-1)})`,
    :math:`z = (z_1, \\dots, z_L)`. The boxes list each scale's layers
    (``model.multiscale.levels`` and ``final``, equal layers counted); the
    shapes are read by running one zero example through the model: each
    scale's input and output, the kept part :math:`h^{(l)}` (the input of the
    next scale) and the factored-out part :math:`z_l` (what the next scale does
    not receive). Layers the flow runs before the multi-scale body
    (dequantization, logit) are named at the top. Texts ``gid``:
    ``"latent-l"`` (:math:`z_{l+1}`), ``"kept-l"`` (:math:`h^{(l+1)}`).

    >>> import matplotlib; matplotlib.use("Agg")
    >>> from flowlib.models import realnvp_image
    >>> fig = multiscale_diagram(realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1))
    >>> [t.get_text() for t in fig.axes[0].texts if t.get_gid() and t.get_gid().startswith("latent")]
    ['$z_{1}$: (2, 4, 4)', '$z_{2}$: (2, 4, 4)']
    """
    ms = model.multiscale if isinstance(model, FlowModel) else model
    shapes, stages = _stage_shapes(ms), [*ms.levels, ms.final]
    pre, lines = _preprocessing(model, ms), [_stage_lines(s) for s in stages]
    height = 1.1 + sum(0.85 + 0.2 * (len(ls) + 1) for ls in lines)
    fig, ax = _canvas(8.7, height)
    y = height - 0.2
    head = f"$x$: {_shape(ms.input_shape)}" + (f",  then {', '.join(pre)} (same shape)" if pre else "")
    ax.text(0.3, y - 0.15, head, va="center", fontsize=10)
    y -= 0.3
    for k, (stage_lines, stage_shapes) in enumerate(zip(lines, shapes)):
        last = k == len(stages) - 1
        kept = _shape(stage_shapes[0]) if k == 0 else f"$h^{{({k})}}$: {_shape(stage_shapes[0])}"
        _arrow(ax, (2.9, y), (2.9, y - 0.55))
        ax.text(3.0, y - 0.27, kept, va="center", fontsize=9, gid=None if k == 0 else f"kept-{k - 1}")
        factored = stage_shapes[1] if last else (stage_shapes[1][0] - shapes[k + 1][0][0], *stage_shapes[1][1:])
        y = _scale_row(ax, y - 0.55, k, stage_lines, stage_shapes, factored, last)
    ax.text(0.3, 0.3, f"$z = (z_1, \\ldots, z_{{{len(stages)}}})$: the factored-out parts and the last "
            f"scale's output, {torch.Size(ms.input_shape).numel()} numbers in all", va="center", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- chapter 12: MADE


def _made_output_names(net: MADE) -> list[str]:
    """The outputs' labels: ``alpha_d``, ``mu_d`` for `MaskedAutoregressive`'s two blocks, else ``theta^(j)_d``."""
    blocks = len(net.layers[-1].mask) // net.dim
    names = [r"\alpha", r"\mu"] if blocks == 2 else [rf"\theta^{{({j})}}" for j in range(blocks)]
    return [f"${names[j]}_{d}$" for j in range(blocks) for d in range(net.dim)]


def made_diagram(net: MADE) -> "Figure":
    """A MADE's units and the connections its masks keep (Germain et al. 2015, figure 1), read from ``net``.

    Inputs :math:`x_d` at the bottom, then each hidden layer, then the outputs
    (for `~flowlib.autoregressive.MaskedAutoregressive`: raw log-scales
    :math:`\\alpha_d` and shifts :math:`\\mu_d`); each unit shows its degree
    (`~flowlib.autoregressive.made_degrees`), and a line joins two units
    wherever the layer's ``mask`` keeps the weight. Output :math:`d` is
    connected, through some path, to exactly the inputs of smaller degree:
    the dimensions before :math:`d` in the order.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = made_diagram(MADE(3, hidden=4, num_hidden_layers=1, order=[2, 0, 1]))
    >>> [t.get_text() for t in fig.axes[0].texts if (t.get_gid() or "").startswith("degree-0-")]
    ['2', '3', '1']
    """
    if not isinstance(net, MADE):
        raise TypeError(f"made_diagram draws a MADE, got {type(net).__name__}")
    masks = [layer.mask.detach().cpu() for layer in net.layers]
    sizes = [masks[0].shape[1]] + [m.shape[0] for m in masks]
    order = torch.argsort(net.input_degrees.cpu()).tolist()  # input order[k] has degree k + 1
    degrees = made_degrees(net.dim, sizes[1], len(masks) - 1, order, sizes[-1] // net.dim)
    width = min(9.5, 1.2 + 0.55 * max(sizes))
    height = 1.0 + 1.25 * (len(sizes) - 1) + 0.6
    fig, ax = _canvas(width, height)
    xs = [[width / 2 + 0.55 * (i - (n - 1) / 2) for i in range(n)] for n in sizes]
    ys = [0.75 + 1.25 * k for k in range(len(sizes))]
    for k, m in enumerate(masks):  # the kept connections, under the units
        for i, j in m.nonzero().tolist():
            ax.plot([xs[k][j], xs[k + 1][i]], [ys[k], ys[k + 1]], color="0.55", lw=0.8, gid=f"edge-{k}-{j}-{i}",
                    zorder=1)
    from matplotlib.patches import Circle

    outputs = _made_output_names(net)
    for k, (row, deg) in enumerate(zip(xs, degrees)):
        color = COND_COLOR if k == 0 else (TRANS_COLOR if k == len(xs) - 1 else _NET_COLOR)
        for i, x in enumerate(row):
            ax.add_patch(Circle((x, ys[k]), 0.2, fc=color, ec="0.25", lw=1, zorder=2))
            ax.text(x, ys[k], str(int(deg[i])), ha="center", va="center", fontsize=9, zorder=3, gid=f"degree-{k}-{i}")
            if k == 0:
                ax.text(x, ys[k] - 0.36, f"$x_{i}$", ha="center", va="top", fontsize=10, gid=f"input-{i}")
            elif k == len(xs) - 1:
                ax.text(x, ys[k] + 0.3, outputs[i], ha="center", va="bottom", fontsize=10, gid=f"output-{i}")
    ax.text(0.1, ys[0], "inputs", va="center", fontsize=9)
    for k in range(1, len(xs) - 1):
        ax.text(0.1, ys[k], f"hidden {k}", va="center", fontsize=9)
    ax.text(0.1, ys[-1], "outputs", va="center", fontsize=9)
    return fig
