"""Tests of flowlib.book.baselines: the ML Gaussian against its closed form, the true toy densities against samples."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib.book.baselines import TRUE_DENSITIES, gaussian_fit, gaussian_nll, true_log_density, true_nll
from flowlib.datasets.toy import sample_toy


def test_gaussian_fit_is_sample_mean_and_biased_covariance():
    x = torch.randn(500, 3, dtype=torch.float64) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 0.7]],
                                                                 dtype=torch.float64) + 4.0
    mean, cov = gaussian_fit(x)
    assert torch.allclose(mean, x.mean(0))
    assert torch.allclose(cov, torch.cov(x.T, correction=0))


def test_gaussian_nll_matches_torch_distributions():
    train = torch.randn(400, 2, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64) + 1.0
    test = torch.randn(300, 2, dtype=torch.float64)
    mean, cov = gaussian_fit(train)
    expected = -torch.distributions.MultivariateNormal(mean, cov).log_prob(test).mean().item()
    assert gaussian_nll(train, test) == pytest.approx(expected, abs=1e-10)


def test_gaussian_nll_on_its_training_points_is_the_closed_form():
    x = torch.randn(1000, 2) * 2.0
    _, cov = gaussian_fit(x)
    closed_form = 0.5 * (2 * math.log(2 * math.pi) + torch.logdet(cov).item() + 2)
    assert gaussian_nll(x, x) == pytest.approx(closed_form, abs=1e-9)


def test_gaussian_fit_is_the_maximum_of_the_likelihood():
    """Moving the mean or scaling the covariance away from the fit only raises the training NLL."""
    x = torch.randn(2000, 2, dtype=torch.float64) + torch.tensor([1.0, -2.0], dtype=torch.float64)
    mean, cov = gaussian_fit(x)
    best = -torch.distributions.MultivariateNormal(mean, cov).log_prob(x).mean()
    for dm, c in ((0.05, 1.0), (0.0, 1.05), (0.0, 0.95)):
        other = -torch.distributions.MultivariateNormal(mean + dm, c * cov).log_prob(x).mean()
        assert other > best


def test_gaussian_errors():
    with pytest.raises(ValueError, match="shape"):
        gaussian_fit(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="dimensions"):
        gaussian_nll(torch.randn(10, 2), torch.randn(5, 3))


@pytest.mark.parametrize("name", TRUE_DENSITIES)
def test_true_density_integrates_to_one(name):
    step = 0.05   # midpoint rule: exponentially accurate for the smooth densities, exact for the checkerboard
    centres = torch.arange(-5.0 + step / 2, 5.0, step, dtype=torch.float64)
    grid = torch.cartesian_prod(centres, centres)
    total = true_log_density(name, grid).exp().sum().item() * step * step
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", TRUE_DENSITIES)
def test_true_density_matches_samples(name):
    """The probability of each cell of a coarse grid, by the density and by 200,000 samples of flowlib.datasets.toy."""
    x = sample_toy(name, 100_000, seed=5, dtype=torch.float64)
    edges = torch.linspace(-4.5, 4.5, 10, dtype=torch.float64)          # 9 x 9 cells of width 1
    cell = torch.bucketize(x, edges) - 1
    inside = ((cell >= 0) & (cell < 9)).all(1)
    counts = torch.bincount(cell[inside, 0] * 9 + cell[inside, 1], minlength=81).double() / x.shape[0]
    fine = 20                                                           # midpoint rule inside each cell
    offsets = (torch.arange(fine, dtype=torch.float64) + 0.5) / fine
    local = torch.cartesian_prod(offsets, offsets)                      # (fine^2, 2) points in the unit cell
    corners = torch.cartesian_prod(edges[:9], edges[:9])                # (81, 2) lower-left corners
    pts = (corners[:, None, :] + local[None]).reshape(-1, 2)
    probs = true_log_density(name, pts).exp().reshape(81, -1).mean(1)   # mean density x cell area 1
    # each cell's frequency within 5 binomial standard deviations (plus a little quadrature slack)
    sd = (probs * (1 - probs) / x.shape[0]).sqrt()
    assert ((counts - probs).abs() <= 5 * sd + 2e-3 * probs + 1e-5).all(), (counts - probs).abs().max()


def test_true_nll_of_the_checkerboard_is_log_32():
    assert true_nll("checkerboard", sample_toy("checkerboard", 1000, seed=0)) == pytest.approx(math.log(32))


def test_eight_gaussians_is_the_mixture_of_torch_distributions():
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 4.0 * torch.stack([angle.cos(), angle.sin()], 1) / 1.414
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.full((8,), 1 / 8, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(centres, 0.5 / 1.414), 1))
    x = 4 * torch.rand(300, 2, dtype=torch.float64) - 2
    assert torch.allclose(true_log_density("8gaussians", x), mixture.log_prob(x))


def test_rings_is_the_average_over_the_angle():
    """The Bessel closed form against the mean of the Gaussian density over 4,000 angles per ring."""
    x = 4 * torch.rand(200, 2, dtype=torch.float64) - 2
    angle = 2 * math.pi * (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    circle = torch.stack([angle.cos(), angle.sin()], 1)
    centres = torch.cat([0.75 * k * circle for k in range(1, 5)])
    sq = (x[:, None] - centres[None]).pow(2).sum(-1)
    by_angle = (torch.exp(-sq / (2 * 0.08 ** 2)) / (2 * math.pi * 0.08 ** 2)).mean(1)
    assert torch.allclose(true_log_density("rings", x).exp(), by_angle, rtol=1e-6, atol=1e-12)


def test_true_density_errors():
    with pytest.raises(ValueError, match="no true density"):
        true_log_density("2spirals", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="2D"):
        true_log_density("rings", torch.zeros(3, 3))
