"""flowlib.book.plots: the density grid against closed forms, grid lines, the three-panel picture, PNG bytes."""

from __future__ import annotations

import math
import struct

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from flowlib.flow import Sequential
from flowlib.flow_model import FlowModel
from flowlib.models import toy_model
from flowlib.book.plots import density_grid, figure_png, grid_lines, plot_density_and_samples
from flowlib.scaling import DiagonalScaling

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scaled_normal(log_scale: tuple[float, float], dtype: torch.dtype = torch.float32) -> FlowModel:
    """z = x e^s with a normal prior: X ~ N(0, diag(e^{-2s}))."""
    layer = DiagonalScaling(2)
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor(log_scale))
    return FlowModel(Sequential(layer), "normal", (2,)).to(dtype)


def test_density_grid_is_the_closed_form_in_the_right_orientation() -> None:
    # an anisotropic Gaussian: a transposed grid would fail
    model = scaled_normal((0.7, -0.4), torch.float64)
    xs, ys, d = density_grid(model, bounds=(-3, 3), resolution=31)
    sx, sy = torch.exp(-model.flow[0].log_scale.detach()).tolist()  # 0.7 and -0.4 rounded to float32
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    expected = np.exp(-0.5 * ((gx / sx) ** 2 + (gy / sy) ** 2)) / (2 * math.pi * sx * sy)
    np.testing.assert_allclose(d, expected, rtol=1e-12)
    np.testing.assert_allclose(xs, np.linspace(-3, 3, 31), rtol=0, atol=1e-15)
    assert xs.dtype == np.float64 and not model.training


def test_density_grid_integrates_to_one() -> None:
    # NICE at initialisation with a logistic prior: its mass outside [-15, 15]^2 is below 1e-6
    model = toy_model("nice", 2, 8)
    xs, ys, d = density_grid(model, bounds=(-15, 15), resolution=301)
    assert d.shape == (301, 301) and (d >= 0).all() and d.dtype == np.float32
    mass = np.trapezoid(np.trapezoid(d, xs, axis=1), ys)
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_density_grid_rejects_a_tiny_resolution() -> None:
    with pytest.raises(ValueError, match="resolution"):
        density_grid(toy_model("realnvp", 1, 4), resolution=1)


def test_grid_lines() -> None:
    lines = grid_lines(-3.0, 3.0, num_lines=13, num_points=200)
    assert len(lines) == 26 and all(l.shape == (200, 2) and l.dtype == torch.float32 for l in lines)
    ticks = np.linspace(-3, 3, 13)
    t = np.linspace(-3, 3, 200)
    for k, c in enumerate(ticks):
        np.testing.assert_allclose(lines[k].numpy(), np.stack([t, np.full(200, c)], 1), atol=1e-6)
        np.testing.assert_allclose(lines[13 + k].numpy(), np.stack([np.full(200, c), t], 1), atol=1e-6)
    assert grid_lines(dtype=torch.float64)[0].dtype == torch.float64
    with pytest.raises(ValueError, match="at least 2"):
        grid_lines(num_lines=1)


def test_plot_density_and_samples_draws_what_the_model_gives() -> None:
    model = scaled_normal((0.3, -0.2))
    data = torch.randn(300, 2)
    fig = plot_density_and_samples(model, data, n_samples=100, resolution=20, title="toy", seed=4)
    data_ax, density_ax, sample_ax = fig.axes
    assert data_ax.get_title() == "toy: data"
    np.testing.assert_array_equal(data_ax.collections[0].get_offsets(), data[:100].numpy())
    np.testing.assert_array_equal(density_ax.images[0].get_array(), density_grid(model, resolution=20)[2])
    # samples: x = z e^{-s} for the generator seeded with `seed`
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(4))
    np.testing.assert_allclose(sample_ax.collections[0].get_offsets(), (z * torch.exp(-torch.tensor([0.3, -0.2]))).numpy(),
                               rtol=1e-6)
    plt.close(fig)


def test_titles_lie_inside_the_figure() -> None:
    """Every title's drawn extent, after layout, lies within the figure (none cut off at the top)."""
    fig = plot_density_and_samples(scaled_normal((0.3, -0.2)), torch.randn(300, 2), n_samples=100, resolution=20,
                                   title="8gaussians, realnvp")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for ax in fig.axes:
        extent = ax.title.get_window_extent(renderer)
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1 and box.x0 <= extent.x0 and extent.x1 <= box.x1, ax.get_title()
    plt.close(fig)


def test_plot_into_given_axes_and_data_only() -> None:
    fig, axes = plt.subplots(2, 3)
    out = plot_density_and_samples(None, torch.randn(50, 2), axes=axes[1])
    assert out is fig and len(fig.axes) == 6
    assert len(axes[1][0].collections) == 1 and not axes[1][1].images and not axes[1][2].collections
    assert not axes[0][0].collections  # the other row is untouched
    plt.close(fig)


def test_figure_png_has_the_figure_size() -> None:
    fig = plt.figure(figsize=(3, 2))
    png = figure_png(fig, dpi=50)
    assert png.startswith(PNG_MAGIC)
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert (width, height) == (150, 100)
    assert not plt.fignum_exists(fig.number)  # closed
    kept = plt.figure(figsize=(1, 1))
    figure_png(kept, close=False)
    assert plt.fignum_exists(kept.number)
    plt.close(kept)


def test_quick_runs_never_write_into_figures(monkeypatch, tmp_path):
    from flowlib.book import chapter as book
    from flowlib.files import figures_dir

    monkeypatch.delenv("FLOWLIB_FIGURES", raising=False)
    monkeypatch.setenv("FLOWLIB_QUICK", "1")
    assert book.figure_path("x.png").parent != figures_dir()
    monkeypatch.setenv("FLOWLIB_FIGURES", str(tmp_path))
    assert book.figure_path("x.png") == tmp_path / "x.png"
    monkeypatch.delenv("FLOWLIB_FIGURES")
    monkeypatch.setenv("FLOWLIB_QUICK", "0")  # a reader's full run: figures/ only when the book is rebuilt
    assert book.figure_path("x.png").parent != figures_dir()
