"""The chapters' diagrams (`flowlib.book.diagrams`) state what the implementation does.

Each test reads a fact off the drawn figure (a cell's colour, a number's position, a label) and compares it with
what flowlib computes, so a diagram that drifts from the code fails here.
"""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.text import Text

from flowlib import (AdditiveCoupling, AffineCoupling, InvertibleConv1x1, MLP, RandomPermutation, ResidualConvNet,
                     ReversePermutation, alternating_mask, channel_mask, checkerboard_mask, half_mask)
from flowlib.autoregressive import MADE, made_degrees
from flowlib.book.diagrams import (COND_COLOR, TRANS_COLOR, coupling_diagram, made_diagram, masking_diagram,
                                   multiscale_diagram, squeeze_diagram)
from flowlib.book.readability import check_readable
from flowlib.models import glow, realnvp_image
from flowlib.reshape import squeeze


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def axes_named(fig, gid):
    found = [ax for ax in fig.axes if ax.get_gid() == gid]
    assert len(found) == 1, f"expected one axes with gid {gid!r}, found {[a.get_gid() for a in fig.axes]}"
    return found[0]


def texts_of(fig):
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def shapes_in(text):
    return [tuple(int(v) for v in m.split(", ")) for m in re.findall(r"\((\d+(?:, \d+)+)\)", text)]


# ----------------------------------------------------------------------------- squeeze


def drawn_numbers(ax):
    """``{value: (row, col)}`` of the numbers written in an image axes (x is the column, y the row)."""
    out = {}
    for t in ax.texts:
        col, row = t.get_position()
        assert float(col).is_integer() and float(row).is_integer(), f"{t.get_text()} drawn between cells"
        out[int(t.get_text())] = (int(row), int(col))
    return out


@pytest.mark.parametrize("height, width", [(4, 4), (2, 6), (6, 4)])
def test_squeeze_diagram_draws_every_pixel_where_flowlib_puts_it(height, width):
    fig = squeeze_diagram(height, width)
    x = torch.arange(height * width).reshape(1, 1, height, width)
    z = squeeze(x)[0]
    inp = drawn_numbers(axes_named(fig, "squeeze-in"))
    assert inp == {r * width + c: (r, c) for r in range(height) for c in range(width)}
    seen = set()
    for c in range(4):
        out = drawn_numbers(axes_named(fig, f"squeeze-out-{c}"))
        assert len(out) == height * width // 4
        for value, (h, w) in out.items():
            assert int(z[c, h, w]) == value                       # flowlib's squeeze
            r, col = divmod(value, width)                        # the docstring's formula, independently
            assert (c, h, w) == (2 * (r % 2) + col % 2, r // 2, col // 2)
        seen |= set(out)
    assert seen == set(range(height * width))


def test_squeeze_diagram_colours_each_output_channel_by_one_block_position():
    fig = squeeze_diagram()
    inp = axes_named(fig, "squeeze-in").images[0].get_array()
    for c in range(4):
        out = axes_named(fig, f"squeeze-out-{c}").images[0].get_array()
        assert (out == c).all(), f"channel {c} holds pixels of other block positions: {out.tolist()}"
    assert inp.tolist() == [[0, 1, 0, 1], [2, 3, 2, 3]] * 2


def test_squeeze_diagram_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even height and width"):
        squeeze_diagram(3, 4)


# ----------------------------------------------------------------------------- masks, permutations, 1x1 conv


def expected_masks(dim, size, channels):
    masks = {f"alternating_mask({dim}, {p})": alternating_mask(dim, p)[None] for p in (0, 1)}
    masks |= {f"half_mask({dim}, {p})": half_mask(dim, p)[None] for p in (0, 1)}
    masks |= {f"checkerboard_mask(1, {size}, {size}, {p})": checkerboard_mask(1, size, size, p)[0] for p in (0, 1)}
    cm = channel_mask(channels, 2, 2, 0)
    masks |= {f"channel_mask({channels}, 2, 2, 0)[{c}]": cm[c] for c in range(channels)}
    return masks


@pytest.mark.parametrize("dim, size, channels", [(6, 4, 4), (8, 6, 2)])
def test_mask_diagram_colours_exactly_the_mask_cells(dim, size, channels):
    fig = masking_diagram(dim, size, channels)
    for gid, mask in expected_masks(dim, size, channels).items():
        image = axes_named(fig, gid).images[0]
        assert image.get_array().tolist() == mask.int().tolist(), gid
        rgba = image.to_rgba(image.get_array())
        for (r, c), cond in zip(torch.cartesian_prod(torch.arange(mask.shape[0]), torch.arange(mask.shape[1])).tolist(),
                                mask.flatten().tolist()):
            want = to_rgba(COND_COLOR if cond else TRANS_COLOR)
            assert tuple(round(v, 3) for v in rgba[r, c]) == tuple(round(v, 3) for v in want), (gid, r, c)


@pytest.mark.parametrize("dim, seed", [(6, 0), (8, 3)])
def test_mask_diagram_draws_the_permutations_index_maps(dim, seed):
    fig = masking_diagram(dim, seed=seed)
    for perm in (ReversePermutation(dim), RandomPermutation(dim, seed)):
        lines = axes_named(fig, f"{type(perm).__name__}({dim})").lines
        drawn = sorted((int(line.get_xdata()[1]), int(line.get_xdata()[0])) for line in lines)   # (z index, x index)
        assert drawn == list(enumerate(perm.perm.tolist())), type(perm).__name__
        assert all(list(line.get_ydata()) == [1, 0] for line in lines)   # from x (top) to z (bottom)


def test_mask_diagram_draws_the_1x1_convolutions_matrix():
    fig = masking_diagram(channels=4, seed=2)
    image = axes_named(fig, "InvertibleConv1x1(4)").images[0]
    assert torch.allclose(torch.as_tensor(image.get_array()), InvertibleConv1x1(4, seed=2).weight().detach())


# ----------------------------------------------------------------------------- coupling layers

VECTOR_MASKS = [alternating_mask(6, 0), alternating_mask(6, 1), half_mask(6, 1)]


def layer_for(kind, mask):
    if mask.dim() == 1:
        cond = int(mask.sum())
        out = (mask.numel() - cond) * (2 if kind is AffineCoupling else 1)
        return kind(mask, MLP(cond, out, hidden=4))
    c = mask.shape[0]
    if bool((mask.flatten(1) == mask.flatten(1)[:, :1]).all()):        # channel mask: the net sees x_I1 only
        cond = int(mask[:, 0, 0].sum())
        out_c = (c - cond) * (2 if kind is AffineCoupling else 1)
        return kind(mask, ResidualConvNet(cond, out_c, hidden_channels=4, num_blocks=0))
    return kind(mask, ResidualConvNet(c, c * (2 if kind is AffineCoupling else 1), hidden_channels=4, num_blocks=0))


ALL_MASKS = VECTOR_MASKS + [checkerboard_mask(1, 4, 4, 0), checkerboard_mask(2, 4, 4, 1), channel_mask(4, 2, 2, 1)]


@pytest.mark.parametrize("kind", [AdditiveCoupling, AffineCoupling])
@pytest.mark.parametrize("mask", ALL_MASKS, ids=lambda m: f"mask{tuple(m.shape)}-{int(m.flatten()[0])}")
def test_coupling_diagram_says_exp_only_for_affine_layers(kind, mask):
    texts = texts_of(coupling_diagram(layer_for(kind, mask)))
    has_exp = any("exp" in t for t in texts)
    assert has_exp == (kind is AffineCoupling), texts
    assert any("$m(x_{I_1})$" in t for t in texts) == (kind is AdditiveCoupling)
    assert any(r"\sum_j s_j(x_{I_1})" in t for t in texts) == (kind is AffineCoupling)   # the log-det
    assert any(kind.__name__ in t for t in texts)


@pytest.mark.parametrize("mask", VECTOR_MASKS, ids=lambda m: str(m.int().tolist()))
def test_coupling_diagram_lists_which_coordinates_condition(mask):
    fig = coupling_diagram(layer_for(AffineCoupling, mask))
    boxes = {t.get_gid(): t.get_text() for t in fig.axes[0].texts if t.get_gid() in ("x_I1", "x_I2")}
    listed = {gid: [int(v) for v in re.findall(r"\d+", text.split("\n")[1])] for gid, text in boxes.items()}
    assert listed == {"x_I1": torch.nonzero(mask).flatten().tolist(), "x_I2": torch.nonzero(~mask).flatten().tolist()}


def test_coupling_diagram_says_what_the_net_sees():
    by_index = texts_of(coupling_diagram(layer_for(AffineCoupling, channel_mask(4, 2, 2, 0))))
    masked = texts_of(coupling_diagram(layer_for(AffineCoupling, checkerboard_mask(1, 4, 4, 0))))
    assert any(r"net sees only $x_{I_1}$" in t for t in by_index)
    assert any(r"net sees $b \odot x$" in t for t in masked)
    assert any("pixels with i + j even" in t for t in masked)    # parity 0: (i + j) even conditions


def test_coupling_diagram_names_a_long_split_briefly():
    fig = coupling_diagram(layer_for(AdditiveCoupling, alternating_mask(784, 1)))
    text = next(t.get_text() for t in fig.axes[0].texts if t.get_gid() == "x_I1")
    assert text.endswith("coordinates 1, 3, 5, ..., 783 (392 of 784)")


def test_coupling_diagram_rejects_other_layers():
    with pytest.raises(TypeError, match="AdditiveCoupling or AffineCoupling"):
        coupling_diagram(ReversePermutation(4))


# ----------------------------------------------------------------------------- multi-scale

MODELS = {
    "realnvp 3 scales": lambda: realnvp_image((1, 16, 16), num_scales=3, hidden_channels=4, num_blocks=1),
    "realnvp 1 scale": lambda: realnvp_image((1, 8, 8), num_scales=1, hidden_channels=4, num_blocks=0),
    "glow": lambda: glow((1, 16, 16), num_scales=2, steps_per_scale=2, hidden_channels=4),
    "realnvp 3 channels, no preprocessing": lambda: realnvp_image((3, 8, 8), num_scales=2, hidden_channels=4,
                                                                  num_blocks=0, preprocess=False),
}


def produced_shapes(ms):
    """What the model's stages produce, stage by stage: the factored-out parts and the kept parts.

    The kept part of a level is the input of the next stage (MultiScale.forward keeps the second half of the
    channels); the factored-out part is the rest. Read with hooks on an actual forward pass.
    """
    stages, seen = [*ms.levels, ms.final], []
    hooks = [s.register_forward_hook(lambda _, i, o: seen.append((i[0], o[0]))) for s in stages]
    with torch.no_grad():
        z, _ = ms(torch.randn(2, *ms.input_shape))
    for h in hooks:
        h.remove()
    kept = [tuple(i.shape[1:]) for i, _ in seen[1:]]
    latent = [(o.shape[1] - nxt[0], *o.shape[2:]) for (_, o), nxt in zip(seen[:-1], kept)] + [tuple(seen[-1][1].shape[1:])]
    assert sum(torch.Size(s).numel() for s in latent) == z.shape[1]   # the pieces make up the whole latent
    return latent, kept


@pytest.mark.parametrize("name", MODELS)
def test_multiscale_diagram_shapes_equal_what_the_model_produces(name):
    model = MODELS[name]()
    ms = model.multiscale
    fig = multiscale_diagram(model)
    labels = {t.get_gid(): t.get_text() for t in fig.axes[0].texts if t.get_gid()}
    latent, kept = produced_shapes(ms)
    assert [shapes_in(labels[f"latent-{k}"]) for k in range(len(latent))] == [[s] for s in latent]
    assert [shapes_in(labels[f"kept-{k}"]) for k in range(len(kept))] == [[s] for s in kept]
    assert not any(g.startswith("latent-") and int(g[7:]) >= len(latent) for g in labels)
    assert latent == ms.latent_shapes                                  # the container's own bookkeeping agrees


def test_multiscale_diagram_lists_each_scales_layers():
    texts = texts_of(multiscale_diagram(realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=0)))
    assert any("3 \u00d7 affine coupling (checkerboard)\nsqueeze\n3 \u00d7 affine coupling (channel)" in t for t in texts)
    assert any("4 \u00d7 affine coupling (checkerboard)" in t for t in texts)
    assert any("Dequantize, Logit" in t for t in texts)
    glow_texts = texts_of(multiscale_diagram(glow((1, 8, 8), num_scales=2, steps_per_scale=3, hidden_channels=4)))
    assert any("squeeze\n3 \u00d7 [ActNorm, 1x1 conv, affine coupling (channel)]" in t for t in glow_texts)


def test_multiscale_diagram_changes_nothing_in_the_model():
    model = glow((1, 8, 8), num_scales=2, steps_per_scale=2, hidden_channels=4)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    multiscale_diagram(model)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)      # ActNorm not initialised, nothing moved
    assert not any(bool(m.initialized) for m in model.modules() if hasattr(m, "initialized"))


def test_multiscale_diagram_takes_the_multiscale_body_alone():
    ms = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=0).multiscale
    texts = texts_of(multiscale_diagram(ms))
    assert not any("Dequantize" in t for t in texts)
    assert any("(2, 4, 4)" in t for t in texts)


# ----------------------------------------------------------------------------- MADE


@pytest.mark.parametrize("order, hidden, layers, per", [([0, 1, 2], 4, 1, 2), ([2, 0, 3, 1], 6, 2, 2),
                                                        ([1, 0], 3, 2, 5)])
def test_made_diagram_draws_the_masks_and_the_degrees(order, hidden, layers, per):
    net = MADE(len(order), hidden, layers, order=order, outputs_per_dim=per)
    fig = made_diagram(net)
    ax = fig.axes[0]
    drawn = {line.get_gid() for line in ax.lines if (line.get_gid() or "").startswith("edge-")}
    kept = {f"edge-{k}-{j}-{i}" for k, layer in enumerate(net.layers) for i, j in layer.mask.nonzero().tolist()}
    assert drawn == kept and kept  # one line per kept weight, none for a masked one
    labels = {t.get_gid(): t.get_text() for t in ax.texts if t.get_gid()}
    for k, deg in enumerate(made_degrees(len(order), hidden, layers, order, per)):
        assert [labels[f"degree-{k}-{i}"] for i in range(len(deg))] == [str(d) for d in deg.tolist()]
    assert [labels[f"input-{i}"] for i in range(len(order))] == [f"$x_{i}$" for i in range(len(order))]
    if per == 2:
        assert labels["output-0"] == "$\\alpha_0$" and labels[f"output-{len(order)}"] == "$\\mu_0$"


def test_made_diagram_rejects_other_nets():
    with pytest.raises(TypeError, match="draws a MADE"):
        made_diagram(MLP(2, 2))


# ----------------------------------------------------------------------------- readable in the notebook

DIAGRAMS = {
    "additive coupling": lambda: coupling_diagram(layer_for(AdditiveCoupling, alternating_mask(6))),
    "affine coupling": lambda: coupling_diagram(layer_for(AffineCoupling, checkerboard_mask(1, 4, 4, 1))),
    "masking": masking_diagram,
    "squeeze": squeeze_diagram,
    "multi-scale": lambda: multiscale_diagram(realnvp_image((1, 28, 28), num_scales=3, hidden_channels=4,
                                                            num_blocks=0)),
    "glow": lambda: multiscale_diagram(glow((1, 32, 32), num_scales=3, steps_per_scale=8, hidden_channels=4)),
    "made": lambda: made_diagram(MADE(4, hidden=6, num_hidden_layers=2, order=[1, 3, 0, 2])),
    "made, spline outputs": lambda: made_diagram(MADE(2, hidden=4, num_hidden_layers=1, outputs_per_dim=7)),
}


@pytest.mark.parametrize("name", DIAGRAMS)
def test_every_diagram_is_readable_in_the_notebook_column(name):
    fig = DIAGRAMS[name]()
    assert fig.get_size_inches()[0] <= 9.5
    found = check_readable(fig)                    # no text below 10 px, nothing outside the figure
    assert found.scale == 1.0                      # shown at full size: at most 950 px wide inline
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert min(sizes) >= 9
