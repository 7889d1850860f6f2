"""Chapter 1's warp: its log-det against autograd, its density against closed forms and integrals, its samples."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from flowlib.jacobian import flow_log_abs_det, jacobian
from flowlib.book.warp import Warp2D, plot_warp, warp_density_and_samples


@pytest.mark.parametrize("tails", [0.0, 0.8])
def test_log_det_matches_autograd_and_inverse(tails: float) -> None:
    f = Warp2D(scale=(1.7, 0.6), bend=0.5, angle=0.7, tails=tails)
    x = 2 * torch.randn(64, 2, dtype=torch.float64)
    z, log_det = f(x)
    torch.testing.assert_close(log_det, flow_log_abs_det(f, x), rtol=1e-12, atol=1e-12)
    x_back, inv_log_det = f.inverse(z)
    torch.testing.assert_close(x_back, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inv_log_det, flow_log_abs_det(f, z, inverse=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inv_log_det, -log_det, rtol=1e-12, atol=1e-12)


def test_linear_warp_is_a_gaussian() -> None:
    # tails = bend = 0: x = R(theta) diag(s) z, so X ~ N(0, R S^2 R^T)
    s, theta = (1.5, 0.4), 0.6
    f = Warp2D(scale=s, angle=theta)
    R = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    A = R @ torch.diag(torch.tensor(s, dtype=torch.float64))
    x = 2 * torch.randn(100, 2, dtype=torch.float64)
    torch.testing.assert_close(jacobian(lambda v: f(v)[0], x), torch.linalg.inv(A).expand(100, 2, 2))
    gaussian = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), A @ A.T)
    z, log_det = f(x)
    log_p = -0.5 * (z ** 2).sum(1) - math.log(2 * math.pi) + log_det
    torch.testing.assert_close(log_p, gaussian.log_prob(x))


def test_warp_density_on_the_grid_is_the_closed_form() -> None:
    s, theta = (1.2, 0.5), math.radians(30)
    xs, ys, d, _ = warp_density_and_samples(*s, bend=0.0, angle_deg=30, tails=0.0, resolution=41, n_samples=1)
    R = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    A = R @ torch.diag(torch.tensor(s, dtype=torch.float64))
    gaussian = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), A @ A.T)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    expected = gaussian.log_prob(torch.tensor(np.stack([gx, gy], -1))).exp().numpy()
    np.testing.assert_allclose(d, expected, rtol=1e-10, atol=1e-14)


def test_bent_heavy_tailed_density_integrates_to_one() -> None:
    xs, ys, d, _ = warp_density_and_samples(1.2, 0.5, 0.3, 30, 0.5, n_samples=1, bounds=(-10, 10),
                                            resolution=400)
    mass = d.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert mass == pytest.approx(1.0, abs=0.005)


def test_samples_follow_the_density() -> None:
    # the fraction of samples in the box [0, 2] x [-1, 1] equals the integral of the density over it
    params = dict(scale_x=1.0, scale_y=0.6, bend=0.4, angle_deg=20, tails=0.6)
    xs, ys, d, samples = warp_density_and_samples(**params, n_samples=40_000, resolution=401, seed=3)
    in_x, in_y = (xs > -1e-9) & (xs < 2 + 1e-9), (ys > -1 - 1e-9) & (ys < 1 + 1e-9)  # grid step 0.02
    integral = np.trapezoid(np.trapezoid(d[np.ix_(in_y, in_x)], xs[in_x], axis=1), ys[in_y])
    inside = ((samples[:, 0] > 0) & (samples[:, 0] < 2) & (samples[:, 1] > -1) & (samples[:, 1] < 1)).mean()
    se = math.sqrt(integral * (1 - integral) / len(samples))
    assert abs(inside - integral) < 4 * se
    again = warp_density_and_samples(**params, n_samples=40_000, resolution=10, seed=3)[3]
    assert np.array_equal(again, samples)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="scale"):
        Warp2D(scale=(1.0, -1.0))
    with pytest.raises(ValueError, match="tails"):
        Warp2D(tails=-0.1)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 2\)"):
        Warp2D()(torch.zeros(3, 3))


def test_plot_warp_draws_density_and_samples() -> None:
    fig = plot_warp(bend=0.3, resolution=20, n_samples=50)
    density_ax, sample_ax = fig.axes
    xs, ys, d, samples = warp_density_and_samples(bend=0.3, resolution=20, n_samples=50)
    np.testing.assert_array_equal(density_ax.images[0].get_array(), d)
    np.testing.assert_array_equal(sample_ax.collections[0].get_offsets(), samples)
    matplotlib.pyplot.close(fig)
