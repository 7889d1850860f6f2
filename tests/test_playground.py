"""The playground's plain functions and its widgets (tiny sizes, fast)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from flowlib.coupling import AdditiveCoupling, AffineCoupling
from flowlib.jacobian import flow_log_abs_det
from flowlib.playground import (
    PLAYGROUND_CLASSES, Warp2D, density_grid, evaluate_nll, figure_png, make_toy_model,
    num_parameters, plot_density_and_samples, playground, train_toy, transform_playground,
    warp_density_and_samples,
)
from flowlib.scaling import DiagonalScaling
from flowlib.toy import sample_toy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_make_toy_model_kinds() -> None:
    nice = make_toy_model("nice", num_couplings=3, hidden=8)
    layers = list(nice.flow)
    assert all(isinstance(l, AdditiveCoupling) for l in layers[:3])
    assert isinstance(layers[3], DiagonalScaling)
    # alternating 1-D halves: the conditioning coordinate flips at every layer
    assert [l.mask.tolist() for l in layers[:3]] == [[True, False], [False, True], [True, False]]
    assert type(nice.prior).__name__ == "StandardLogistic"
    real = make_toy_model("realnvp", num_couplings=3, hidden=8)
    assert all(isinstance(l, AffineCoupling) for l in real.flow)
    assert type(real.prior).__name__ == "StandardNormal"
    assert type(make_toy_model("nice", 2, 8, prior="normal").prior).__name__ == "StandardNormal"
    with pytest.raises(ValueError, match="kind"):
        make_toy_model("glow")


def test_make_toy_model_seeded() -> None:
    a, b = make_toy_model("realnvp", 2, 8, seed=3), make_toy_model("realnvp", 2, 8, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # NICE and RealNVP of the same size have almost the same parameter count
    n, r = num_parameters(make_toy_model("nice", 4, 16)), num_parameters(make_toy_model("realnvp", 4, 16))
    assert abs(n - r) / r < 0.1


def test_train_toy_lowers_loss_and_reports_progress() -> None:
    torch.manual_seed(0)
    data = sample_toy("8gaussians", 2000, seed=0)
    model = make_toy_model("realnvp", 2, 16)
    before = evaluate_nll(model, data)
    calls: list[tuple[int, float]] = []
    losses = train_toy(model, data, steps=60, lr=1e-2, batch_size=128,
                       callback=lambda s, l: calls.append((s, l)), callback_every=25)
    assert len(losses) == 60 and all(math.isfinite(l) for l in losses)
    assert [s for s, _ in calls] == [25, 50, 60]
    assert evaluate_nll(model, data) < before
    assert not model.training


def test_train_toy_is_reproducible() -> None:
    data = sample_toy("two_moons", 500, seed=0)
    runs = [train_toy(make_toy_model("nice", 2, 8, seed=1), data, steps=5, lr=1e-3, batch_size=32, seed=2)
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_train_toy_rejects_bad_input() -> None:
    model = make_toy_model("nice", 2, 8)
    with pytest.raises(ValueError, match="steps"):
        train_toy(model, torch.randn(10, 2), steps=0)
    with pytest.raises(ValueError, match="shape"):
        train_toy(model, torch.randn(10), steps=1)


def test_evaluate_nll_matches_log_prob() -> None:
    model = make_toy_model("realnvp", 2, 8)
    x = torch.randn(100, 2)
    # at initialisation the flow is the identity, so NLL is the prior's
    expected = (0.5 * (x ** 2).sum(1) + math.log(2 * math.pi)).mean().item()
    assert evaluate_nll(model, x, batch_size=7) == pytest.approx(expected, rel=1e-5)


def test_density_grid_integrates_to_one() -> None:
    model = make_toy_model("nice", 2, 8)
    xs, ys, d = density_grid(model, bounds=(-12, 12), resolution=121)
    assert d.shape == (121, 121) and xs.shape == ys.shape == (121,)
    assert np.all(d >= 0)
    area = (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert d.sum() * area == pytest.approx(1.0, abs=0.01)
    # row i, column j is the point (xs[j], ys[i])
    x = torch.tensor([[xs[5], ys[70]]], dtype=torch.float32)
    assert d[70, 5] == pytest.approx(model.log_prob(x).exp().item(), rel=1e-4)


def test_warp2d_log_det_matches_autograd() -> None:
    f = Warp2D(scale=(1.7, 0.6), bend=0.5, angle=0.7, tails=0.8)
    x = torch.randn(16, 2, dtype=torch.float64)
    z, log_det = f(x)
    torch.testing.assert_close(log_det, flow_log_abs_det(f, x))
    x_back, inv_log_det = f.inverse(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(inv_log_det, -log_det)
    lin = Warp2D(scale=(2.0, 0.5))
    assert torch.allclose(lin(x)[1], torch.zeros(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="scale"):
        Warp2D(scale=(1.0, -1.0))


def test_warp_density_normalised() -> None:
    xs, ys, d, s = warp_density_and_samples(1.2, 0.5, 0.3, 30, 0.5, n_samples=50, bounds=(-8, 8),
                                            resolution=200)
    assert d.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0]) == pytest.approx(1.0, abs=0.02)
    assert s.shape == (50, 2)


def test_plots_make_png() -> None:
    data = sample_toy("rings", 300, seed=0)
    png = figure_png(plot_density_and_samples(make_toy_model("nice", 2, 8), data, n_samples=100,
                                              resolution=20))
    assert png.startswith(PNG_MAGIC)
    assert figure_png(plot_density_and_samples(None, data)).startswith(PNG_MAGIC)


def _classes(widget) -> list[str]:
    return list(widget._dom_classes)


def test_playground_widget_trains_on_click() -> None:
    box = playground(density="8gaussians", kind="nice", num_couplings=2, hidden=8, steps=20,
                     n_train=500, n_test=200, batch_size=64)
    parts = box.parts
    assert PLAYGROUND_CLASSES["root"] in _classes(box)
    for key in ("density", "model", "couplings", "hidden", "steps", "lr", "train", "progress",
                "status", "plot"):
        assert PLAYGROUND_CLASSES[key] in _classes(parts[key]), key
    assert parts["train"].description == "Train"
    assert [parts[k].description for k in ("density", "model", "couplings", "hidden", "steps", "lr")] == \
        ["density", "model", "couplings", "hidden", "steps", "lr"]
    before = parts["plot"].value
    assert bytes(before).startswith(PNG_MAGIC)
    parts["model"].value = "realnvp"
    parts["train"].click()
    assert parts["plot"].value != before
    assert parts["progress"].value == parts["progress"].max == 20
    assert "test NLL" in parts["status"].value
    assert not parts["train"].disabled


def test_playground_density_change_redraws() -> None:
    box = playground(density="rings", num_couplings=1, hidden=4, steps=20, n_train=200, n_test=50)
    before = box.parts["plot"].value
    box.parts["density"].value = "checkerboard"
    assert box.parts["plot"].value != before


def test_transform_playground_redraws() -> None:
    box = transform_playground()
    assert PLAYGROUND_CLASSES["transform_root"] in _classes(box)
    image = box.parts["plot"]
    assert PLAYGROUND_CLASSES["plot"] in _classes(image)
    before = image.value
    box.parts["bend"].value = 0.5
    assert image.value != before
